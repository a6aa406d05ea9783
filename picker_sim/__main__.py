import argparse

from picker_sim import add_sim_arguments, sim_runner

parser = argparse.ArgumentParser(prog="python -m picker_sim")
add_sim_arguments(parser)
try:
    run = sim_runner(parser.parse_args())
except ValueError as exc:
    parser.error(str(exc))
run()
