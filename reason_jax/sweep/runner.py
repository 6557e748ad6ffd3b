"""Running a sweep: every run a `reason-jax train` subprocess, then `eval --step 0` and `eval`.

Resumable at every stage. A run whose training finished carries `sweep-train.done` (written
after `train` exited 0 with metrics.jsonl at the configured `steps`); an interrupted one is
simply started again, and `reason-jax train` resumes its workdir from the last checkpoint. A
run stopped early without an error (`time_budget_s`, a first Ctrl-C / SIGTERM) is reported as
incomplete and continues on the next invocation. Evals are done when their files exist
(`eval-0.json`; `eval.json` with `step` = `steps`).

Local jobs run in parallel (`jobs`), each in its own process with its own log
(`WORKDIR/sweep.log`, stdout and stderr of every stage). With several jobs each is pinned to
its share of the CPU cores (XLA's CPU thread pool sizes itself from the affinity mask) and
told so through OMP/MKL/OpenBLAS thread counts; on one accelerator each job may preallocate
only its share of device memory.

`launch_commands` prints the same pipeline as `python launch/tpu.py run ... -- bash -c '...'`,
one per run, for pod slices.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

from reason_jax import paths
from reason_jax.sweep.grid import SweepRun, plan

TRAIN_DONE = "sweep-train.done"
START_EVAL = "eval-0.json"
END_EVAL = "eval.json"
LOG_FILE = "sweep.log"
PLAN_FILE = "sweep.json"
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclasses.dataclass
class Sweep:
    """A planned sweep: the config every run starts from, the overrides for every run, the
    grid and seeds, and per run its planned `steps` (from its resolved config)."""

    config: str | None
    common: list[str]
    grid: list[tuple[str, list[str]]]
    seeds: list[int]
    root: str
    runs: list[SweepRun]
    steps: dict[int, int]

    def overrides(self, run: SweepRun) -> list[str]:
        return run.overrides(self.common)

    def to_json(self) -> dict:
        return {"config": self.config, "overrides": self.common,
                "grid": {k: v for k, v in self.grid}, "seeds": self.seeds,
                "runs": [{"variant": r.variant, "seed": r.seed, "workdir": r.workdir,
                          "steps": self.steps[r.index]} for r in self.runs]}


def prepare(config: str | None, common: list[str], grid, seeds: list[int], root: str) -> Sweep:
    """Plan the runs and load every run's config once: a misspelt key or an impossible value
    fails here, before anything runs (ConfigError names the run's overrides)."""
    from reason_jax.config.loading import ConfigError, load_config

    if any(o.split("=", 1)[0] == "seed" for o in common):
        raise ConfigError("a sweep sets `seed` per run; use --seeds instead of --config.seed")
    runs = plan(grid, seeds, root)
    steps = {}
    for run in runs:
        try:
            steps[run.index] = int(load_config(config, run.overrides(common)).steps)
        except ConfigError as e:
            raise ConfigError(f"run {run.name}: {e}") from None
    return Sweep(config, list(common), grid, seeds, root, runs, steps)


# ------------------------------------------------------------------------------- commands


def _config_argv(sweep: Sweep, run: SweepRun) -> list[str]:
    argv = ["--config", sweep.config] if sweep.config else []
    return argv + ["--workdir", run.workdir] + [f"--config.{o}" for o in sweep.overrides(run)]


def stage_argvs(sweep: Sweep, run: SweepRun, program: list[str]) -> dict[str, list[str]]:
    """The three commands of a run, `program` being e.g. ["reason-jax"]."""
    args = _config_argv(sweep, run)
    return {"train": [*program, "train", *args],
            "eval-start": [*program, "eval", *args, "--step", "0"],
            "eval-end": [*program, "eval", *args]}


def launch_commands(sweep: Sweep, *, name: str = "NAME", zone: str = "ZONE",
                    accelerator: str = "ACCELERATOR", extra: tuple[str, ...] = ()) -> list[str]:
    """One `python launch/tpu.py run` line per run: a queued resource `NAME-<run index>`
    running train, eval at step 0 and eval at the end in one job. The indices are stable, so a
    relaunched run gets its slice name back; relaunching is safe (train resumes its workdir,
    the evals are measured again). `extra` goes to tpu.py as is (e.g. --spot, --retries 3)."""
    lines = []
    for run in sweep.runs:
        job = " && ".join(shlex.join(a) for a in stage_argvs(sweep, run, ["reason-jax"]).values())
        argv = ["python", "launch/tpu.py", "run", "--name", f"{name}-{run.index}", "--zone", zone,
                "--accelerator", accelerator, *extra, "--", "bash", "-c", job]
        lines.append(shlex.join(argv))
    return lines


# --------------------------------------------------------------------------------- state


def read_json(path) -> dict | None:
    """A small JSON file of the sweep (eval results, markers); None if absent or torn."""
    try:
        return json.loads(paths.read_text(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def final_step(workdir: str) -> int:
    """The last RL step in the run's metrics.jsonl (0 if there is none yet)."""
    from reason_jax.observe.metrics import read_metrics

    try:
        rows = read_metrics(paths.join(workdir, "metrics.jsonl"))
    except FileNotFoundError:
        return 0
    return max((int(r["step"]) for r in rows if isinstance(r.get("step"), int)), default=0)


def stage_done(sweep: Sweep, run: SweepRun, stage: str) -> bool:
    if stage == "train":
        # The marker names the steps it reached: a sweep rerun with more steps trains on.
        marker = read_json(paths.join(run.workdir, TRAIN_DONE))
        return marker is not None and marker.get("steps") == sweep.steps[run.index]
    if stage == "eval-start":
        return paths.exists(paths.join(run.workdir, START_EVAL))
    end = read_json(paths.join(run.workdir, END_EVAL))
    return end is not None and end.get("step") == sweep.steps[run.index]


# ------------------------------------------------------------------------------ local jobs


def job_env(slot: int, jobs: int, base: dict[str, str] | None = None):
    """(environment, cpus) of job slot `slot` of `jobs`: its share of the cores (None: leave
    the affinity alone, one job), matching thread counts, a share of accelerator memory."""
    env = dict(os.environ if base is None else base)
    if jobs <= 1:
        return env, None
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    per = max(1, len(cpus) // jobs)
    first = (slot * per) % len(cpus)
    mine = cpus[first:first + per]
    for var in _THREAD_VARS:
        env.setdefault(var, str(len(mine)))
    # JAX preallocates 75% of an accelerator's memory per process; N jobs on one device
    # must share it. (A CPU backend ignores this.)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / jobs:.3f}")
    return env, mine


class _RunLog:
    """A run's log: `WORKDIR/sweep.log`, appended. A bucket has no append, so for a gs://
    workdir the log is kept in a local file and uploaded whole after every stage."""

    def __init__(self, workdir: str):
        self.target = paths.join(workdir, LOG_FILE)
        if paths.is_remote(workdir):
            digest = hashlib.sha1(workdir.encode()).hexdigest()[:16]
            self.local = os.path.join(tempfile.gettempdir(), "reason-jax-sweep", digest + ".log")
        else:
            self.local = self.target
        os.makedirs(os.path.dirname(self.local), exist_ok=True)

    def open(self):
        return open(self.local, "ab")

    def sync(self):
        if self.local != self.target:
            with open(self.local, "rb") as f:
                paths.write_bytes_atomic(self.target, f.read())


@dataclasses.dataclass
class RunOutcome:
    run: SweepRun
    status: str  # done | incomplete | failed | skipped
    detail: str = ""


class LocalRunner:
    """Runs a sweep's pending stages as subprocesses, `jobs` runs at a time."""

    def __init__(self, sweep: Sweep, *, jobs: int = 1, program: list[str] | None = None,
                 echo: Callable[[str], None] | None = None):
        self.sweep = sweep
        self.jobs = max(1, int(jobs))
        self.program = program or [sys.executable, "-m", "reason_jax"]
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.stop = threading.Event()
        self._live: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def _stage(self, run: SweepRun, stage: str, argv: list[str], slot: int) -> int:
        env, cpus = job_env(slot, self.jobs)
        log = _RunLog(run.workdir)
        with log.open() as out:
            out.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {stage}: "
                      f"{shlex.join(argv)}\n".encode())
            out.flush()
            # Its own session: a Ctrl-C at the terminal reaches only the sweep, which passes
            # one SIGINT on (two would stop `train` without its checkpoint).
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            if cpus:
                try:  # before the interpreter starts any thread: its threads inherit this
                    os.sched_setaffinity(proc.pid, cpus)
                except OSError:
                    pass
            with self._lock:
                self._live.add(proc)
            code = proc.wait()
            with self._lock:
                self._live.discard(proc)
            out.write(f"=== {stage} exited with {code}\n".encode())
        log.sync()
        return code

    def run_one(self, run: SweepRun, slot: int) -> RunOutcome:
        sweep, steps = self.sweep, self.sweep.steps[run.index]
        argvs = stage_argvs(sweep, run, self.program)
        log = _RunLog(run.workdir).target
        paths.as_path(run.workdir).mkdir(parents=True, exist_ok=True)
        for stage in ("train", "eval-start", "eval-end"):
            if stage_done(sweep, run, stage):
                continue
            if self.stop.is_set():
                return RunOutcome(run, "incomplete", "interrupted")
            self.echo(f"[sweep] {run.name}: {stage} (log {log})")
            t0 = time.perf_counter()
            code = self._stage(run, stage, argvs[stage], slot)
            if code != 0:
                if self.stop.is_set():
                    return RunOutcome(run, "incomplete", f"interrupted during {stage}")
                return RunOutcome(run, "failed", f"{stage} exited with {code}; see {log}")
            if stage == "train":
                reached = final_step(run.workdir)
                if reached < steps:
                    return RunOutcome(run, "incomplete",
                                      f"training stopped at step {reached} of {steps}")
                paths.write_text_atomic(paths.join(run.workdir, TRAIN_DONE), json.dumps(
                    {"steps": steps, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}))
            self.echo(f"[sweep] {run.name}: {stage} done in {time.perf_counter() - t0:.0f} s")
        return RunOutcome(run, "done")

    def _interrupt(self):
        """Ctrl-C: no new stage starts; running ones get SIGINT, which `reason-jax train`
        answers by checkpointing after its current step (a second one stops it at once)."""
        self.stop.set()
        with self._lock:
            for proc in self._live:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)

    def run(self) -> list[RunOutcome]:
        pending = [r for r in self.sweep.runs
                   if not all(stage_done(self.sweep, r, s) for s in ("train", "eval-start",
                                                                     "eval-end"))]
        done = [RunOutcome(r, "skipped", "finished earlier") for r in self.sweep.runs
                if r not in pending]
        for outcome in done:
            self.echo(f"[sweep] {outcome.run.name}: finished earlier, skipped")
        slots: queue.Queue[int] = queue.Queue()
        for i in range(self.jobs):
            slots.put(i)

        def task(run):
            slot = slots.get()
            try:
                return self.run_one(run, slot)
            finally:
                slots.put(slot)

        outcomes = []
        with concurrent.futures.ThreadPoolExecutor(self.jobs) as pool:
            futures = [pool.submit(task, r) for r in pending]
            try:
                for f in concurrent.futures.as_completed(futures):
                    outcomes.append(f.result())
            except KeyboardInterrupt:
                self._interrupt()
                while True:
                    try:
                        outcomes = [f.result() for f in futures]
                        break
                    except KeyboardInterrupt:  # a second Ctrl-C: the runs stop at once
                        self._interrupt()
        order = {r.index: i for i, r in enumerate(self.sweep.runs)}
        return sorted(done + outcomes, key=lambda o: order[o.run.index])


def write_plan(sweep: Sweep) -> None:
    paths.write_text_atomic(paths.join(sweep.root, PLAN_FILE),
                            json.dumps(sweep.to_json(), indent=2))
