"""`llm-picker replay`: a trace through the picker's policies against simulated engines, in
process and in virtual time; `trace import` and `--calibrate` beside it."""
