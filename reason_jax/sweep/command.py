"""`reason-jax sweep`: plan, run (or print launch commands), evaluate, report."""

from __future__ import annotations

from typing import Any

from reason_jax.sweep.grid import parse_grid, parse_seeds
from reason_jax.sweep.report import write_report
from reason_jax.sweep.runner import LocalRunner, launch_commands, prepare, write_plan


def sweep(config: str | None, overrides: list[str], grid_specs: list[str], seeds: str | int,
          root: str, *, jobs: int = 1, report_only: bool = False,
          print_launch: bool = False, launch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every grid point x seed under `root` (resuming what is there), evaluate each at
    its start and end, and write results.md / results.csv / sweep.png.

    `print_launch`: nothing runs; the summary's `launch` holds one `launch/tpu.py run`
    command per run (`launch`: name / zone / accelerator / extra for them). `report_only`:
    only the report, from whatever the runs have written so far.
    """
    plan = prepare(config, list(overrides), parse_grid(grid_specs), parse_seeds(seeds), root)
    if print_launch:
        return {"runs": len(plan.runs), "launch": launch_commands(plan, **(launch or {}))}
    outcomes = []
    if not report_only:
        write_plan(plan)
        outcomes = LocalRunner(plan, jobs=jobs).run()
    summary = write_report(plan)
    summary["runs"] = len(plan.runs)
    for status in ("failed", "incomplete"):
        summary[status] = [f"{o.run.name}: {o.detail}" for o in outcomes if o.status == status]
    return summary
