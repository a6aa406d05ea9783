import argparse

from picker_sim import add_sim_arguments, config_from_args, run_sim

parser = argparse.ArgumentParser(prog="python -m picker_sim")
add_sim_arguments(parser)
ns = parser.parse_args()
run_sim(config_from_args(ns), ns.host, ns.port)
