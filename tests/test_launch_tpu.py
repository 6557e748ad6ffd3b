"""launch/tpu.py: the exact gcloud commands (--dry-run), argument errors, the preemption loop."""

import io
import sys
from pathlib import Path

import pytest
from helpers import load_launch_script

ROOT = Path(__file__).resolve().parents[1]

tpu = load_launch_script("tpu")

V5P = ["--name", "rj", "--zone", "us-east5-a", "--project", "my-proj", "--dry-run"]
V5E_X2 = ["--name", "rj", "--zone", "us-west4-a", "--num-slices", "2", "--dry-run"]
TRAIN = ["--", "reason-jax", "train", "--config", "configs/gsm8k.py", "--workdir", "gs://b/run1"]


def dry_run(*argv):
    out = io.StringIO()
    assert tpu.main(list(argv), out=out) == 0
    return out.getvalue().splitlines()


# ----------------------------------------------------------------------------- v5p-32, one slice

def test_v5p_create():
    assert dry_run("create", *V5P, "--accelerator", "v5p-32", "--spot") == [
        "gcloud compute tpus queued-resources create rj --zone=us-east5-a --project=my-proj "
        "--accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5 --node-id=rj --spot",
        "gcloud compute tpus queued-resources describe rj --zone=us-east5-a --project=my-proj "
        "'--format=value(state.state)'",
    ]


def test_v5p_create_reserved_no_wait_runtime_override():
    assert dry_run("create", *V5P, "--accelerator", "v5p-32", "--reserved", "--no-wait",
                   "--runtime-version", "v2-alpha-tpuv5-custom") == [
        "gcloud compute tpus queued-resources create rj --zone=us-east5-a --project=my-proj "
        "--accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5-custom --node-id=rj "
        "--reserved",
    ]


def test_v5p_setup():
    assert dry_run("setup", *V5P) == [
        "gcloud compute tpus tpu-vm scp build/reason_jax_code.tar.gz rj:reason_jax_code.tar.gz "
        "--zone=us-east5-a --project=my-proj --worker=all",
        "gcloud compute tpus tpu-vm ssh rj --zone=us-east5-a --project=my-proj --worker=all "
        "'--command=mkdir -p ~/reason-jax && tar -xzf ~/reason_jax_code.tar.gz -C ~/reason-jax "
        "&& bash ~/reason-jax/tpu_scripts/setup.sh'",
    ]


def test_v5p_run_with_retries():
    assert dry_run("run", *V5P, "--accelerator", "v5p-32", "--spot", "--retries", "3",
                   *TRAIN) == [
        # 16 chips = 16 JAX devices on 4 hosts; health check first, then the command.
        "gcloud compute tpus tpu-vm ssh rj --zone=us-east5-a --project=my-proj --worker=all "
        "'--command=bash ~/reason-jax/tpu_scripts/run.sh --expected-devices 16 -- reason-jax "
        "train --config configs/gsm8k.py --workdir gs://b/run1'",
        # the watch loop: queued-resource state, then process 0's exit code
        "gcloud compute tpus queued-resources describe rj --zone=us-east5-a --project=my-proj "
        "'--format=value(state.state)'",
        "gcloud compute tpus tpu-vm ssh rj --zone=us-east5-a --project=my-proj --worker=0 "
        "'--command=cat ~/reason-jax/logs/worker_0.exit 2>/dev/null || true'",
    ]


def test_v5p_run_quoting_survives_both_shells():
    import shlex
    (line,) = dry_run("run", *V5P, "--accelerator", "v5p-32", "--env", "HF_HOME=/tmp/hf cache",
                      "--", "python", "-c", "print('hi there')")
    local = shlex.split(line)  # what gcloud receives
    assert local[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rj"]
    remote = local[-1].removeprefix("--command=")
    assert remote == ("HF_HOME='/tmp/hf cache' bash ~/reason-jax/tpu_scripts/run.sh "
                      "--expected-devices 16 -- python -c 'print('\"'\"'hi there'\"'\"')'")
    assert shlex.split(remote) == ["HF_HOME=/tmp/hf cache", "bash",
                                   "~/reason-jax/tpu_scripts/run.sh", "--expected-devices", "16",
                                   "--", "python", "-c", "print('hi there')"]


def test_v5p_logs_and_delete():
    assert dry_run("logs", *V5P) == [
        "gcloud compute tpus tpu-vm ssh rj --zone=us-east5-a --project=my-proj --worker=all "
        "'--command=tail -n 50 ~/reason-jax/logs/worker_*.log'",
    ]
    assert dry_run("logs", *V5P, "--fetch", "out") == [
        "gcloud compute tpus tpu-vm scp --recurse rj:reason-jax/logs out/rj --zone=us-east5-a "
        "--project=my-proj --worker=all",
    ]
    assert dry_run("delete", *V5P) == [
        "gcloud compute tpus queued-resources delete rj --zone=us-east5-a --project=my-proj "
        "--force --quiet",
    ]


# ----------------------------------------------------------------------------- 2 x v5e-16

def test_multislice_v5e_create():
    assert dry_run("create", *V5E_X2, "--accelerator", "v5e-16", "--spot") == [
        "gcloud compute tpus queued-resources create rj --zone=us-west4-a "
        "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --node-count=2 "
        "--node-prefix=rj --spot",
        "gcloud compute tpus queued-resources describe rj --zone=us-west4-a "
        "'--format=value(state.state)'",
    ]


def test_multislice_v5e_setup():
    setup = ("'--command=mkdir -p ~/reason-jax && tar -xzf ~/reason_jax_code.tar.gz "
             "-C ~/reason-jax && bash ~/reason-jax/tpu_scripts/setup.sh'")
    assert dry_run("setup", *V5E_X2) == [
        "gcloud compute tpus tpu-vm scp build/reason_jax_code.tar.gz rj-0:reason_jax_code.tar.gz "
        "--zone=us-west4-a --worker=all",
        "gcloud compute tpus tpu-vm scp build/reason_jax_code.tar.gz rj-1:reason_jax_code.tar.gz "
        "--zone=us-west4-a --worker=all",
        f"gcloud compute tpus tpu-vm ssh rj-0 --zone=us-west4-a --worker=all {setup}",
        f"gcloud compute tpus tpu-vm ssh rj-1 --zone=us-west4-a --worker=all {setup}",
    ]


def test_multislice_v5e_run_sets_megascale_env():
    assert dry_run("run", *V5E_X2, "--accelerator", "v5e-16",
                   "--megascale-coordinator", "10.130.0.5", *TRAIN) == [
        f"gcloud compute tpus tpu-vm ssh rj-{i} --zone=us-west4-a --worker=all "
        f"'--command=MEGASCALE_NUM_SLICES=2 MEGASCALE_SLICE_ID={i} MEGASCALE_PORT=8080 "
        f"MEGASCALE_COORDINATOR_ADDRESS=10.130.0.5:8080 bash ~/reason-jax/tpu_scripts/run.sh "
        f"--expected-devices 32 --hosts-per-slice 4 -- reason-jax train "
        f"--config configs/gsm8k.py --workdir gs://b/run1'"
        for i in range(2)
    ]
    # Without --megascale-coordinator the VM's queued-resource metadata provides the address.
    lines = dry_run("run", *V5E_X2, "--accelerator", "v5e-16", "--skip-health-check", *TRAIN)
    assert "MEGASCALE_COORDINATOR_ADDRESS" not in lines[0]
    assert "run.sh --no-health-check --hosts-per-slice 4 --" in lines[1]


def test_multislice_v5e_logs_and_delete():
    assert dry_run("logs", *V5E_X2, "--worker", "0", "--follow", "--lines", "5") == [
        f"gcloud compute tpus tpu-vm ssh rj-{i} --zone=us-west4-a --worker=0 "
        f"'--command=tail -n 5 -F ~/reason-jax/logs/worker_*.log'" for i in range(2)
    ]
    assert dry_run("delete", *V5E_X2) == [
        "gcloud compute tpus queued-resources delete rj --zone=us-west4-a --force --quiet",
    ]


# ----------------------------------------------------------------------------- accelerators

@pytest.mark.parametrize("name, gcloud, devices, hosts", [
    ("v4-8", "v4-8", 4, 1), ("v4-32", "v4-32", 16, 4), ("v5p-32", "v5p-32", 16, 4),
    ("v5e-16", "v5litepod-16", 16, 4), ("v5litepod-8", "v5litepod-8", 8, 1),
    ("v6e-64", "v6e-64", 64, 16), ("v3-32", "v3-32", 32, 4),
])
def test_accelerator_table(name, gcloud, devices, hosts):
    acc = tpu.parse_accelerator(name)
    assert (acc.gcloud_name, acc.devices, acc.hosts) == (gcloud, devices, hosts)


# ----------------------------------------------------------------------------- argument errors

def error_of(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        tpu.main(list(argv), out=io.StringIO())
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("bad", ["v5p32", "tpu-v5p-32", "v7x-8", "v5p-", "h100-8"])
def test_unknown_accelerator_format(capsys, bad):
    err = error_of(capsys, "create", "--name", "rj", "--zone", "z", "--accelerator", bad,
                   "--dry-run")
    assert f"argument --accelerator: unknown accelerator type {bad!r}" in err
    assert "e.g. v4-16, v5p-32, v5litepod-16 (or v5e-16), v6e-8" in err


def test_impossible_slice_size(capsys):
    err = error_of(capsys, "create", "--name", "rj", "--zone", "z", "--accelerator", "v5p-12",
                   "--dry-run")
    assert "12 is not a slice size of v5p" in err


@pytest.mark.parametrize("sub", ["create", "setup", "run", "logs", "delete"])
def test_missing_zone(capsys, sub):
    extra = ["--accelerator", "v5p-32"] if sub in ("create", "run") else []
    tail = ["--", "true"] if sub == "run" else []
    err = error_of(capsys, sub, "--name", "rj", *extra, "--dry-run", *tail)
    assert f"{sub}: --zone is required (e.g. --zone us-east5-a)" in err


def test_other_errors(capsys):
    assert "run: missing the command after `--`" in error_of(
        capsys, "run", "--name", "rj", "--zone", "z", "--accelerator", "v5p-32", "--dry-run")
    assert "--name 'My_TPU'" in error_of(capsys, "delete", "--name", "My_TPU", "--zone", "z")
    assert "not allowed with argument --spot" in error_of(
        capsys, "create", "--name", "rj", "--zone", "z", "--accelerator", "v5p-32", "--spot",
        "--reserved")
    assert "expected KEY=VALUE" in error_of(
        capsys, "run", "--name", "rj", "--zone", "z", "--accelerator", "v5p-32", "--env", "X",
        "--", "true")


# ----------------------------------------------------------------------------- preemption loop

class ScriptedRunner(tpu.Runner):
    """Records commands; answers state / exit-code queries from a script."""

    def __init__(self, answers):
        super().__init__(dry_run=False, out=io.StringIO())
        self.answers = list(answers)
        self.commands = []

    def run(self, step, check=True):
        self.commands += [" ".join(argv[:5]) + " " + argv[5] for argv in step]
        return [0] * len(step)

    def capture(self, argv, dry_value=""):
        self.commands.append(" ".join(argv[:5]) + " " + argv[5])
        return self.answers.pop(0)

    def sleep(self, seconds):
        pass


def test_run_recreates_after_preemption_and_returns_the_job_code(tmp_path):
    args = tpu.parse_args(["run", "--name", "rj", "--zone", "z", "--accelerator", "v5p-32",
                           "--spot", "--retries", "1", "--tarball", str(tmp_path / "c.tgz"),
                           *TRAIN])
    runner = ScriptedRunner([
        "ACTIVE", "",            # running: no exit code yet
        "SUSPENDED",             # preempted -> delete, create, wait, setup, relaunch
        "PROVISIONING", "ACTIVE",  # waiting for the new slice
        "ACTIVE", "0",           # the resumed job finished
    ])
    assert tpu.do_run(runner, args) == 0
    assert runner.commands == [
        "gcloud compute tpus tpu-vm ssh rj",             # launch
        "gcloud compute tpus queued-resources describe rj",
        "gcloud compute tpus tpu-vm ssh rj",             # exit code?
        "gcloud compute tpus queued-resources describe rj",  # SUSPENDED
        "gcloud compute tpus queued-resources delete rj",
        "gcloud compute tpus queued-resources create rj",
        "gcloud compute tpus queued-resources describe rj",
        "gcloud compute tpus queued-resources describe rj",
        f"gcloud compute tpus tpu-vm scp {tmp_path / 'c.tgz'}",
        "gcloud compute tpus tpu-vm ssh rj",             # setup.sh
        "gcloud compute tpus tpu-vm ssh rj",             # relaunch
        "gcloud compute tpus queued-resources describe rj",
        "gcloud compute tpus tpu-vm ssh rj",             # exit code 0
    ]
    assert (tmp_path / "c.tgz").stat().st_size > 0


def test_run_gives_up_when_retries_are_spent(tmp_path):
    args = tpu.parse_args(["run", "--name", "rj", "--zone", "z", "--accelerator", "v5p-32",
                           "--retries", "1", "--tarball", str(tmp_path / "c.tgz"), *TRAIN])
    runner = ScriptedRunner(["FAILED", "ACTIVE", "SUSPENDED"])
    assert tpu.do_run(runner, args) == 1
    assert runner.commands.count("gcloud compute tpus queued-resources create rj") == 1


# ----------------------------------------------------------------------------- tpu_scripts/run.sh

RUN_SH = ROOT / "tpu_scripts" / "run.sh"


def run_sh(tmp_path, *args, **env):
    import os
    import subprocess
    full_env = dict(os.environ, REASON_JAX_LOG_DIR=str(tmp_path / "logs"), TPU_WORKER_ID="0",
                    REASON_JAX_VENV=str(Path(sys.executable).parents[1]), JAX_PLATFORMS="cpu",
                    PYTHONPATH=str(ROOT))
    full_env.update(env)
    return subprocess.run(["bash", str(RUN_SH), *args], env=full_env, capture_output=True,
                          text=True, timeout=60)


def test_run_sh_health_check_then_command(tmp_path):
    out = run_sh(tmp_path, "--foreground", "--expected-devices", "8", "--",
                 "python", "-c", "import os; print('job says', os.environ['PROCESS_INDEX'])")
    assert out.returncode == 0, out.stdout + out.stderr
    log = (tmp_path / "logs" / "worker_0.log").read_text()
    assert '"health_check": "ok"' in log and "job says 0" in log
    assert (tmp_path / "logs" / "worker_0.exit").read_text().strip() == "0"


def test_run_sh_failed_health_check_stops_before_the_command(tmp_path):
    out = run_sh(tmp_path, "--foreground", "--expected-devices", "16", "--",
                 "python", "-c", "print('RAN' * 2)")
    assert out.returncode == 1
    log = (tmp_path / "logs" / "worker_0.log").read_text()
    assert "jax.device_count()=8, expected 16" in log and "RANRAN" not in log


def test_run_sh_names_logs_by_process_index_across_slices(tmp_path):
    # Slice 1, worker 2 of a 4-host slice is JAX process 6.
    out = run_sh(tmp_path, "--foreground", "--no-health-check", "--hosts-per-slice", "4", "--",
                 "bash", "-c", "echo $PROCESS_INDEX $MEGASCALE_SLICE_ID; exit 7",
                 TPU_WORKER_ID="2", MEGASCALE_NUM_SLICES="2", MEGASCALE_SLICE_ID="1",
                 MEGASCALE_COORDINATOR_ADDRESS="10.0.0.2:8080")
    assert out.returncode == 7
    assert "6 1" in (tmp_path / "logs" / "worker_6.log").read_text()
    assert (tmp_path / "logs" / "worker_6.exit").read_text().strip() == "7"


@pytest.mark.skipif(__import__("shutil").which("tmux") is None, reason="needs tmux")
def test_run_sh_detached_under_tmux(tmp_path):
    import subprocess
    import time
    session = f"rj-test-{tmp_path.name}"[:40]
    out = run_sh(tmp_path, "--session", session, "--no-health-check", "--",
                 "bash", "-c", "echo detached $TPU_WORKER_ID", TPU_WORKER_ID="3")
    try:
        assert out.returncode == 0, out.stderr
        assert f"started in tmux session {session}" in out.stdout
        exit_file = tmp_path / "logs" / "worker_3.exit"
        deadline = time.monotonic() + 20
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert exit_file.read_text().strip() == "0"
        assert "detached 3" in (tmp_path / "logs" / "worker_3.log").read_text()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_run_retries_a_failed_recreation(tmp_path):
    args = tpu.parse_args(["run", "--name", "rj", "--zone", "z", "--accelerator", "v5p-32",
                           "--retries", "2", "--tarball", str(tmp_path / "c.tgz"), *TRAIN])
    # Preempted; the first new slice FAILs while waiting; the second one runs the job to exit 5.
    runner = ScriptedRunner(["SUSPENDED", "FAILED", "ACTIVE", "ACTIVE", "5"])
    assert tpu.do_run(runner, args) == 5
    assert runner.commands.count("gcloud compute tpus queued-resources create rj") == 2
    assert runner.commands.count("gcloud compute tpus queued-resources delete rj") == 2
