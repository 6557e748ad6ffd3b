"""Cloud TPU VM pod slices with `gcloud` only: create, setup, run, logs, delete.

    python launch/tpu.py create --name rj --zone us-east5-a --accelerator v5p-32 --spot
    python launch/tpu.py setup  --name rj --zone us-east5-a
    python launch/tpu.py run    --name rj --zone us-east5-a --accelerator v5p-32 --spot \
        --retries 3 -- reason-jax train --config configs/NAME.py --workdir gs://BUCKET/run1
    python launch/tpu.py logs   --name rj --zone us-east5-a [--follow | --fetch DIR]
    python launch/tpu.py delete --name rj --zone us-east5-a

Slices are queued resources named `--name`: one TPU node of the same name, or with
`--num-slices M` (multislice over DCN) M nodes `NAME-0 .. NAME-{M-1}`. `setup` copies the code
(a tarball of the git working tree: tracked and untracked-but-not-ignored files) to every worker
and runs tpu_scripts/setup.sh there; `run` starts tpu_scripts/run.sh on every worker of every
slice, which runs tpu_scripts/health_check.py and then the command under tmux, logging to
`~/reason-jax/logs/worker_{process index}.log`. With `--retries N` (or `--wait`) `run` then
watches the queued resource: when it is preempted it deletes it, creates it again, sets it up and
starts the same command, which resumes from the last checkpoint in its (gs://) workdir.

Every subcommand takes `--dry-run`: print the gcloud commands, one per line, instead of running
them. Commands are built by pure functions (`*_commands`) and executed by `Runner`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

Argv = list[str]
Step = list[Argv]  # commands that run in parallel (one per slice)

REPO_ROOT = Path(__file__).resolve().parents[1]
REMOTE_DIR = "reason-jax"  # under the remote home directory
REMOTE_TARBALL = "reason_jax_code.tar.gz"
DEFAULT_TARBALL = Path("build") / REMOTE_TARBALL
MEGASCALE_PORT = 8080
ACTIVE = "ACTIVE"
# Queued-resource states after which the slice is gone (spot preemption, maintenance, failure).
LOST_STATES = frozenset({"SUSPENDING", "SUSPENDED", "FAILED", "DELETING"})
GCLOUD = "gcloud"


# --------------------------------------------------------------------------- accelerators

@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One slice's accelerator type, e.g. `v5p-32` (32 TensorCores = 16 chips on 4 hosts)."""
    generation: str  # v2 v3 v4 v5p v5e v6e
    size: int  # the number in the name: TensorCores (v2-v4, v5p) or chips (v5e, v6e)

    @property
    def gcloud_name(self) -> str:
        prefix = "v5litepod" if self.generation == "v5e" else self.generation
        return f"{prefix}-{self.size}"

    @property
    def chips(self) -> int:
        return self.size if self.generation in CHIP_COUNTED else self.size // 2

    @property
    def devices(self) -> int:
        """jax.device_count() on one slice (v2/v3 show each TensorCore, later ones each chip)."""
        return self.size if self.generation in ("v2", "v3") else self.chips

    @property
    def hosts(self) -> int:
        if self.generation in CHIP_COUNTED:
            return 1 if self.chips <= 8 else self.chips // 4
        return max(1, self.chips // 4)

    @property
    def default_runtime_version(self) -> str:
        return RUNTIME_VERSIONS[self.generation]


CHIP_COUNTED = ("v5e", "v6e")
RUNTIME_VERSIONS = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base",
                    "v4": "tpu-ubuntu2204-base", "v5p": "v2-alpha-tpuv5",
                    "v5e": "v2-alpha-tpuv5-lite", "v6e": "v2-alpha-tpuv6e"}
_ACCELERATOR_RE = re.compile(r"^(v2|v3|v4|v5p|v5e|v5litepod|v6e)-(\d+)$")
ACCELERATOR_HELP = "<generation>-<size>, e.g. v4-16, v5p-32, v5litepod-16 (or v5e-16), v6e-8"


def parse_accelerator(text: str) -> Accelerator:
    match = _ACCELERATOR_RE.match(text.strip().lower())
    if not match:
        raise ValueError(f"unknown accelerator type {text!r}: expected {ACCELERATOR_HELP}")
    generation, size = match.group(1), int(match.group(2))
    generation = "v5e" if generation == "v5litepod" else generation
    if generation in CHIP_COUNTED:
        ok = size >= 1 and size & (size - 1) == 0
    else:
        ok = size >= 8 and size % 8 == 0
    if not ok:
        raise ValueError(f"accelerator {text!r}: {size} is not a slice size of {generation} "
                         f"(TensorCores, a multiple of 8, for v2-v5p; chips, a power of 2, "
                         f"for v5e/v6e)")
    return Accelerator(generation, size)


# --------------------------------------------------------------------------- targets

@dataclasses.dataclass(frozen=True)
class Target:
    """Which queued resource (and TPU nodes) the commands talk to."""
    name: str
    zone: str
    project: str | None = None
    num_slices: int = 1

    @property
    def nodes(self) -> list[str]:
        if self.num_slices == 1:
            return [self.name]
        return [f"{self.name}-{i}" for i in range(self.num_slices)]

    @property
    def location(self) -> Argv:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])


_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _qr(target: Target, verb: str, *rest: str) -> Argv:
    return [GCLOUD, "compute", "tpus", "queued-resources", verb, target.name, *target.location,
            *rest]


def _ssh(target: Target, node: str, command: str, worker: str = "all") -> Argv:
    return [GCLOUD, "compute", "tpus", "tpu-vm", "ssh", node, *target.location,
            f"--worker={worker}", f"--command={command}"]


def _scp(target: Target, source: str, dest: str, worker: str = "all",
         recurse: bool = False) -> Argv:
    return [GCLOUD, "compute", "tpus", "tpu-vm", "scp", *(["--recurse"] if recurse else []),
            source, dest, *target.location, f"--worker={worker}"]


# --------------------------------------------------------------------------- command builders

def create_commands(target: Target, accelerator: Accelerator, *,
                    runtime_version: str | None = None, provisioning: str | None = None) -> Step:
    """`gcloud compute tpus queued-resources create` for one slice or a multislice."""
    argv = _qr(target, "create", f"--accelerator-type={accelerator.gcloud_name}",
               f"--runtime-version={runtime_version or accelerator.default_runtime_version}")
    if target.num_slices == 1:
        argv.append(f"--node-id={target.name}")
    else:
        argv += [f"--node-count={target.num_slices}", f"--node-prefix={target.name}"]
    if provisioning is not None:
        argv.append(f"--{provisioning}")  # spot | reserved | best-effort
    return [argv]


def state_command(target: Target) -> Argv:
    """Prints the queued resource's state: ACCEPTED, PROVISIONING, ACTIVE, SUSPENDED, FAILED..."""
    return _qr(target, "describe", "--format=value(state.state)")


def delete_commands(target: Target) -> Step:
    """Deletes the queued resource and (--force) its TPU nodes."""
    return [_qr(target, "delete", "--force", "--quiet")]


def copy_commands(target: Target, tarball: str | Path) -> Step:
    return [_scp(target, str(tarball), f"{node}:{REMOTE_TARBALL}") for node in target.nodes]


def setup_commands(target: Target) -> Step:
    remote = (f"mkdir -p ~/{REMOTE_DIR} && tar -xzf ~/{REMOTE_TARBALL} -C ~/{REMOTE_DIR} && "
              f"bash ~/{REMOTE_DIR}/tpu_scripts/setup.sh")
    return [_ssh(target, node, remote) for node in target.nodes]


def run_commands(target: Target, accelerator: Accelerator | None, command: Sequence[str], *,
                 env: dict[str, str] | None = None, megascale_coordinator: str | None = None,
                 health_check: bool = True) -> Step:
    """Starts tpu_scripts/run.sh (health check, then `command`) on every worker of every slice.

    Multislice: each slice gets MEGASCALE_NUM_SLICES / MEGASCALE_SLICE_ID / MEGASCALE_PORT, and
    MEGASCALE_COORDINATOR_ADDRESS when given (else tpu_scripts/env.sh reads the value the queued
    resource published in the VM metadata).
    """
    steps = []
    for slice_id, node in enumerate(target.nodes):
        variables = dict(env or {})
        if target.num_slices > 1:
            variables.update(MEGASCALE_NUM_SLICES=str(target.num_slices),
                             MEGASCALE_SLICE_ID=str(slice_id),
                             MEGASCALE_PORT=str(MEGASCALE_PORT))
            if megascale_coordinator:
                address = megascale_coordinator
                if ":" not in address:
                    address = f"{address}:{MEGASCALE_PORT}"
                variables["MEGASCALE_COORDINATOR_ADDRESS"] = address
        words = ["bash", f"~/{REMOTE_DIR}/tpu_scripts/run.sh"]
        if not health_check:
            words.append("--no-health-check")
        elif accelerator is not None:
            words += ["--expected-devices", str(accelerator.devices * target.num_slices)]
        if target.num_slices > 1 and accelerator is not None:
            words += ["--hosts-per-slice", str(accelerator.hosts)]
        words += ["--", *command]
        # `~/` must reach the remote shell unquoted; everything else is quoted.
        remote = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in variables.items()),
                           *(w if w.startswith("~/") else shlex.quote(w) for w in words)])
        steps.append(_ssh(target, node, remote))
    return steps


def exit_code_command(target: Target) -> Argv:
    """Prints process 0's exit code once its job has ended, nothing while it runs."""
    return _ssh(target, target.nodes[0],
                f"cat ~/{REMOTE_DIR}/logs/worker_0.exit 2>/dev/null || true", worker="0")


def logs_commands(target: Target, *, worker: str = "all", lines: int = 50,
                  follow: bool = False) -> Step:
    tail = f"tail -n {lines}{' -F' if follow else ''} ~/{REMOTE_DIR}/logs/worker_*.log"
    return [_ssh(target, node, tail, worker=worker) for node in target.nodes]


def fetch_logs_commands(target: Target, dest: str | Path, *, worker: str = "all") -> Step:
    """Copies every worker's logs/ into DEST/NODE/ (file names carry the process index)."""
    return [_scp(target, f"{node}:{REMOTE_DIR}/logs", str(Path(dest) / node), worker=worker,
                 recurse=True) for node in target.nodes]


# --------------------------------------------------------------------------- code tarball

def code_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files of the git working tree (what a commit of
    the working tree would hold), else every file outside .git/.venv."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=root, check=True,
                             capture_output=True).stdout.decode()
        names = sorted({n for n in out.split("\0") if n})
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "build", "__pycache__", "logs"}
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.is_file() and not skip & set(p.relative_to(root).parts))
    return [n for n in names if (root / n).is_file()]


def make_tarball(root: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for name in code_files(root):
            tar.add(root / name, arcname=name)
    return dest


# --------------------------------------------------------------------------- runner

class CommandError(RuntimeError):
    pass


class Runner:
    """Runs commands, or only prints them (`dry_run`). The one place that executes anything."""

    def __init__(self, dry_run: bool = False, out=None):
        self.dry_run = dry_run
        self.out = out or sys.stdout

    def echo(self, argv: Argv) -> None:
        print(shlex.join(argv), file=self.out, flush=True)

    def run(self, step: Step, check: bool = True) -> list[int]:
        """Runs the step's commands in parallel; raises CommandError if one fails."""
        for argv in step:
            self.echo(argv)
        if self.dry_run:
            return [0] * len(step)
        procs = [subprocess.Popen(argv) for argv in step]
        codes = [p.wait() for p in procs]
        if check and any(codes):
            bad = [shlex.join(a) for a, c in zip(step, codes) if c]
            raise CommandError(f"command failed ({max(codes)}): " + "; ".join(bad))
        return codes

    def capture(self, argv: Argv, dry_value: str = "") -> str | None:
        """stdout of one command (stripped), None if it failed."""
        self.echo(argv)
        if self.dry_run:
            return dry_value
        done = subprocess.run(argv, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    def sleep(self, seconds: float) -> None:
        if not self.dry_run:
            time.sleep(seconds)


# --------------------------------------------------------------------------- flows

def wait_until_active(runner: Runner, target: Target, *, poll_s: float, timeout_s: float) -> None:
    start = time.monotonic()
    while True:
        state = runner.capture(state_command(target), dry_value=ACTIVE)
        if state == ACTIVE:
            return
        if state == "FAILED":
            raise CommandError(f"queued resource {target.name} is FAILED")
        if time.monotonic() - start > timeout_s:
            raise CommandError(f"queued resource {target.name} not ACTIVE after {timeout_s:g}s "
                               f"(state {state})")
        print(f"[tpu] {target.name}: {state or 'unknown'}; waiting", file=sys.stderr, flush=True)
        runner.sleep(poll_s)


def do_create(runner: Runner, args, wait: bool | None = None) -> int:
    runner.run(create_commands(args.target, args.accelerator,
                               runtime_version=args.runtime_version,
                               provisioning=args.provisioning))
    if (not getattr(args, "no_wait", False)) if wait is None else wait:
        wait_until_active(runner, args.target, poll_s=args.poll_s, timeout_s=args.wait_timeout_s)
    return 0


def do_setup(runner: Runner, args) -> int:
    if not runner.dry_run:
        make_tarball(REPO_ROOT, Path(args.tarball))
    runner.run(copy_commands(args.target, args.tarball))
    runner.run(setup_commands(args.target))
    return 0


def _launch(runner: Runner, args) -> None:
    runner.run(run_commands(args.target, args.accelerator, args.command, env=args.env,
                            megascale_coordinator=args.megascale_coordinator,
                            health_check=not args.skip_health_check))


def _recreate(runner: Runner, args) -> None:
    runner.run(delete_commands(args.target), check=False)
    do_create(runner, args, wait=True)
    do_setup(runner, args)
    _launch(runner, args)


def do_run(runner: Runner, args) -> int:
    _launch(runner, args)
    if not (args.retries or args.wait):
        return 0
    retries_left = args.retries
    lost = None  # why the slice must be recreated, if it must
    while True:
        if lost is not None:
            if retries_left <= 0:
                print(f"[tpu] {args.target.name}: {lost}; no retries left", file=sys.stderr)
                return 1
            retries_left -= 1
            print(f"[tpu] {args.target.name}: {lost}; recreating it, {retries_left} retries "
                  f"left after this one", file=sys.stderr, flush=True)
            try:
                _recreate(runner, args)
                lost = None
            except CommandError as e:
                lost = f"recreating failed ({e})"
                runner.sleep(args.poll_s)
                continue
        runner.sleep(args.poll_s)
        state = runner.capture(state_command(args.target), dry_value=ACTIVE)
        if state in LOST_STATES:
            lost = f"state {state} (preempted or failed)"
        elif state == ACTIVE:
            code = runner.capture(exit_code_command(args.target), dry_value="")
            if code and code.strip().isdigit():
                print(f"[tpu] process 0 exited with {code}", file=sys.stderr)
                return int(code)
        elif state is None:
            print(f"[tpu] could not read the state of {args.target.name}; retrying",
                  file=sys.stderr, flush=True)
        if runner.dry_run:  # the loop repeats the two commands above until the job ends
            return 0


def do_logs(runner: Runner, args) -> int:
    if args.fetch:
        runner.run(fetch_logs_commands(args.target, args.fetch, worker=args.worker))
    else:
        runner.run(logs_commands(args.target, worker=args.worker, lines=args.lines,
                                 follow=args.follow), check=False)
    return 0


def do_delete(runner: Runner, args) -> int:
    runner.run(delete_commands(args.target))
    return 0


# --------------------------------------------------------------------------- command line

def _accelerator_arg(text: str) -> Accelerator:
    try:
        return parse_accelerator(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _env_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/tpu.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="subcommand", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True,
                        help="queued resource name (and TPU node name, or prefix for slices)")
    common.add_argument("--zone", default=None, help="e.g. us-east5-a (required)")
    common.add_argument("--project", default=None, help="default: gcloud's configured project")
    common.add_argument("--num-slices", type=int, default=1,
                        help="multislice: this many slices of --accelerator joined over DCN")
    common.add_argument("--dry-run", action="store_true",
                        help="print the gcloud commands instead of running them")
    common.add_argument("--poll-s", type=float, default=60.0,
                        help="seconds between queued-resource state checks")

    def add_create_flags(p, accelerator_required: bool):
        p.add_argument("--accelerator", type=_accelerator_arg, required=accelerator_required,
                       help=ACCELERATOR_HELP + " (one slice)")
        p.add_argument("--runtime-version", default=None,
                       help="TPU VM image; default by generation (v5p: v2-alpha-tpuv5, ...)")
        group = p.add_mutually_exclusive_group()
        group.add_argument("--spot", dest="provisioning", action="store_const", const="spot",
                           help="Spot capacity (preemptible; pair with run --retries)")
        group.add_argument("--reserved", dest="provisioning", action="store_const",
                           const="reserved", help="the project's reservation")
        group.add_argument("--best-effort", dest="provisioning", action="store_const",
                           const="best-effort", help="best-effort (preemptible) capacity")
        p.add_argument("--wait-timeout-s", type=float, default=6 * 3600.0,
                       help="give up waiting for ACTIVE after this long")

    p = sub.add_parser("create", parents=[common], help="request the slice(s), wait until ACTIVE")
    add_create_flags(p, accelerator_required=True)
    p.add_argument("--no-wait", action="store_true",
                   help="return once requested instead of waiting until ACTIVE")

    p = sub.add_parser("setup", parents=[common], help="copy the code, run setup.sh everywhere")
    p.add_argument("--tarball", default=str(DEFAULT_TARBALL),
                   help="where to build the code tarball (default %(default)s)")

    p = sub.add_parser("run", parents=[common],
                       help="health check, then COMMAND on every worker (after `--`)")
    add_create_flags(p, accelerator_required=True)
    p.add_argument("--tarball", default=str(DEFAULT_TARBALL),
                   help="where to build the code tarball (default %(default)s)")
    p.add_argument("--retries", type=int, default=0,
                   help="recreate + setup + rerun up to N times when preempted (implies --wait)")
    p.add_argument("--wait", action="store_true", help="wait for the job and return its code")
    p.add_argument("--env", type=_env_arg, action="append", default=[],
                   help="KEY=VALUE exported to the command (repeatable)")
    p.add_argument("--megascale-coordinator", default=None,
                   help="multislice: IP[:port] of slice 0's worker 0 (default: VM metadata)")
    p.add_argument("--skip-health-check", action="store_true",
                   help="start the command without tpu_scripts/health_check.py")

    p = sub.add_parser("logs", parents=[common], help="tail (or --fetch) the workers' logs")
    p.add_argument("--worker", default="all", help="worker number or `all`")
    p.add_argument("--lines", type=int, default=50)
    p.add_argument("--follow", action="store_true")
    p.add_argument("--fetch", default=None, metavar="DIR", help="copy logs/ into DIR/NODE/")

    sub.add_parser("delete", parents=[common], help="delete the queued resource and its nodes")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.zone:
        parser.error(f"{args.subcommand}: --zone is required (e.g. --zone us-east5-a)")
    if not _NAME_RE.match(args.name) or len(args.name) > 60:
        parser.error(f"--name {args.name!r}: use lowercase letters, digits and '-', starting "
                     f"with a letter (at most 60 characters)")
    if args.num_slices < 1:
        parser.error("--num-slices must be >= 1")
    if args.subcommand == "run":
        if not command:
            parser.error("run: missing the command after `--`")
        if args.retries < 0:
            parser.error("--retries must be >= 0")
        args.env = dict(args.env)
    elif command:
        parser.error(f"{args.subcommand} takes no command after `--`")
    args.command = command
    args.target = Target(args.name, args.zone, args.project, args.num_slices)
    return args


FLOWS = {"create": do_create, "setup": do_setup, "run": do_run, "logs": do_logs,
         "delete": do_delete}


def main(argv: Sequence[str] | None = None, out=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.dry_run and shutil.which(GCLOUD) is None:
        print("error: gcloud not found on PATH (install the Google Cloud CLI, or use --dry-run)",
              file=sys.stderr)
        return 2
    runner = Runner(dry_run=args.dry_run, out=out)
    try:
        return FLOWS[args.subcommand](runner, args)
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
