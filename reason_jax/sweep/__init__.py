"""Ablations as a workflow: `reason-jax sweep` runs a grid of config values x seeds,
evaluates every run at its start and end, and reports means with 95% intervals.

  grid.py     `--grid KEY=V1,V2` and `--seeds` -> the runs and their directories
  runner.py   local subprocess jobs (resumable, parallel) or `launch/tpu.py` commands
  report.py   Student t intervals, results.md and results.csv
  plot.py     sweep.png
  command.py  the command itself
"""

from reason_jax.sweep.command import sweep
from reason_jax.sweep.grid import GridError, SweepRun, parse_grid, parse_seeds, plan
from reason_jax.sweep.report import mean_ci, t_quantile

__all__ = ["GridError", "SweepRun", "mean_ci", "parse_grid", "parse_seeds", "plan", "sweep",
           "t_quantile"]
