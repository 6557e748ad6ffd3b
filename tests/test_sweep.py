"""`reason-jax sweep`: grid parsing and run naming, Student t intervals, the runner's resume
logic (with a stand-in for `reason-jax` that writes what train/eval write), the report's
arithmetic, --print-launch, and one real tiny sweep end to end."""

import csv
import io
import json
import math
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from helpers import load_launch_script
from reason_jax.config.loading import ConfigError
from reason_jax.sweep import GridError, mean_ci, parse_grid, parse_seeds, plan, t_quantile
from reason_jax.sweep.command import sweep
from reason_jax.sweep.report import t_two_sided_mass
from reason_jax.sweep.runner import LocalRunner, job_env, launch_commands, prepare

# ------------------------------------------------------------------------------- the grid


def test_parse_grid():
    assert parse_grid(["rl.algo=grpo,dapo,cispo", "config.rl.clip_high=0.28, 0.35"]) == [
        ("rl.algo", ["grpo", "dapo", "cispo"]), ("rl.clip_high", ["0.28", "0.35"])]
    # Commas inside brackets or quotes belong to the value (tuple-valued keys).
    assert parse_grid(["data.buckets=(16,32),(64,128)", 'data.path="a,b",c']) == [
        ("data.buckets", ["(16,32)", "(64,128)"]), ("data.path", ['"a,b"', "c"])]
    assert parse_grid([]) == []


@pytest.mark.parametrize("specs, match", [
    (["rl.algo"], "KEY=V1"), (["=a,b"], "KEY=V1"), (["seed=1,2"], "--seeds"),
    (["rl.algo=grpo", "rl.algo=dapo"], "twice"), (["rl.algo=grpo,"], "empty"),
    (["rl.algo=grpo,grpo"], "repeats"), (["data.buckets=(16,32"], "unbalanced")])
def test_parse_grid_rejects(specs, match):
    with pytest.raises(GridError, match=match):
        parse_grid(specs)


def test_parse_seeds():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds(1) == [0]
    assert parse_seeds("0,5,7") == [0, 5, 7]
    for bad in ("0", "a", "1,1", "1,x"):
        with pytest.raises(GridError):
            parse_seeds(bad)


def test_plan_names_dirs_and_order(tmp_path):
    grid = parse_grid(["rl.algo=grpo,dapo", "rl.clip_high=0.28,0.35"])
    runs = plan(grid, [0, 1], str(tmp_path))
    assert len(runs) == 8 and [r.index for r in runs] == list(range(8))
    assert runs[0].name == "rl.algo=grpo,rl.clip_high=0.28/seed=0"
    assert [r.variant for r in runs[::2]] == [
        "rl.algo=grpo,rl.clip_high=0.28", "rl.algo=grpo,rl.clip_high=0.35",
        "rl.algo=dapo,rl.clip_high=0.28", "rl.algo=dapo,rl.clip_high=0.35"]
    assert runs[3].workdir == str(tmp_path / "rl.algo=grpo,rl.clip_high=0.35" / "seed=1")
    assert runs[3].overrides(["steps=2"]) == ["steps=2", "rl.algo=grpo", "rl.clip_high=0.35",
                                              "seed=1"]
    # Unsafe characters are replaced, and the name gets a hash so variants never collide.
    a, b = (plan(parse_grid([f"data.path={v}"]), [0], "gs://b/sw")[0] for v in ("x/y", "x_y"))
    assert a.workdir.startswith("gs://b/sw/data.path=x_y-") and a.workdir != b.workdir
    assert b.workdir == "gs://b/sw/data.path=x_y/seed=0"
    assert plan([], [3], str(tmp_path))[0].name == "base/seed=3"


# ----------------------------------------------------------------------------- the maths

# Two-sided 95%: t_{0.975, df} (standard tables).
@pytest.mark.parametrize("df, t", [(1, 12.7062047), (2, 4.30265273), (3, 3.18244631),
                                   (4, 2.77644511), (5, 2.57058184), (9, 2.26215716),
                                   (29, 2.04522964)])
def test_t_quantile_table(df, t):
    assert t_quantile(0.95, df) == pytest.approx(t, rel=1e-7)


def test_t_mass_closed_form_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 41):
        for t in (0.0, 0.3, 1.0, 2.5, 7.0):
            assert t_two_sided_mass(t, df) == pytest.approx(
                2 * stats.t.cdf(t, df) - 1, abs=1e-12), (df, t)
        assert t_quantile(0.9, df) == pytest.approx(stats.t.ppf(0.95, df), rel=1e-9)


def test_mean_ci():
    # [0.3, 0.4, 0.5]: mean 0.4, s = 0.1, half-width 4.30265273 * 0.1 / sqrt(3).
    mean, lo, hi = mean_ci([0.3, 0.4, 0.5])
    half = 4.30265273 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.4) and (lo, hi) == (pytest.approx(0.4 - half),
                                                       pytest.approx(0.4 + half))
    mean, lo, hi = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert mean_ci([0.2, 0.2])[1:] == (0.2, 0.2)


# -------------------------------------------------------------- the runner, with a stand-in

# Writes what `reason-jax train` / `eval` write, with values that depend on seed and variant
# (so the report's arithmetic can be checked), and logs every call. FAKE_STOP=VARIANT:SEED
# stops that run's training after step 1 (exit 0, like a time budget); FAKE_FAIL=SEED makes
# that seed's train exit 3.
FAKE = textwrap.dedent("""
    import json, os, sys
    from reason_jax import paths
    argv = sys.argv[1:]
    cmd, wd = argv[0], argv[argv.index("--workdir") + 1]
    opts = dict(a[len("--config."):].split("=", 1) for a in argv if a.startswith("--config."))
    seed, steps = int(opts["seed"]), int(opts["steps"])
    clip = float(opts.get("rl.clip_high", "0.28"))
    paths.as_path(wd).mkdir(parents=True, exist_ok=True)
    calls = paths.join(wd, "calls.txt")
    old = paths.read_text(calls) if paths.exists(calls) else ""
    step = argv[argv.index("--step") + 1] if "--step" in argv else "end"
    paths.write_text_atomic(calls, old + f"{cmd} {step}\\n")
    tag = f"{opts.get('rl.clip_high')}:{seed}"
    if cmd == "train":
        if os.environ.get("FAKE_FAIL") == str(seed):
            sys.exit(3)
        stop = 1 if os.environ.get("FAKE_STOP") == tag else steps
        rows = [{"step": s, "accuracy": 0.1 * s + seed, "reward/mean": s - clip}
                for s in range(1, stop + 1)]
        paths.write_text_atomic(paths.join(wd, "metrics.jsonl"),
                                "".join(json.dumps(r) + "\\n" for r in rows))
    else:
        start = step == "0"
        p1 = 0.2 + 0.01 * seed + (0 if start else clip)
        out = {"pass@1": p1, "k": 2, "pass@2": p1 + 0.1, "maj@2": p1 + 0.05,
               "greedy_accuracy": p1 + 0.02, "step": 0 if start else steps}
        paths.write_text_atomic(paths.join(wd, "eval-0.json" if start else "eval.json"),
                                json.dumps(out))
""")


@pytest.fixture
def fake_program(tmp_path):
    script = tmp_path / "fake_reason_jax.py"
    script.write_text(FAKE)
    return [sys.executable, str(script)]


def _calls(run):
    from reason_jax import paths

    path = paths.join(run.workdir, "calls.txt")
    return paths.read_text(path).split("\n")[:-1] if paths.exists(path) else []


def _fake_sweep(root, seeds=(0, 1)):
    return prepare(None, ["steps=2"], parse_grid(["rl.clip_high=0.28,0.35"]), list(seeds), root)


def test_runner_runs_resumes_and_skips(tmp_path, fake_program, monkeypatch):
    sw = _fake_sweep(str(tmp_path / "sw"))
    monkeypatch.setenv("FAKE_STOP", "0.35:1")
    out = {o.run.name: o for o in LocalRunner(sw, jobs=2, program=fake_program,
                                              echo=lambda m: None).run()}
    assert [o.status for o in out.values()] == ["done", "done", "done", "incomplete"]
    stopped = sw.runs[3]
    assert out[stopped.name].detail == "training stopped at step 1 of 2"
    assert _calls(stopped) == ["train end"]  # no eval of an unfinished run
    assert _calls(sw.runs[0]) == ["train end", "eval 0", "eval end"]
    assert os.path.exists(os.path.join(sw.runs[0].workdir, "sweep.log"))

    # Again: finished runs are skipped whole; the stopped one trains on, then is evaluated.
    monkeypatch.delenv("FAKE_STOP")
    out = LocalRunner(sw, jobs=1, program=fake_program, echo=lambda m: None).run()
    assert [o.status for o in out] == ["skipped", "skipped", "skipped", "done"]
    assert _calls(sw.runs[0]) == ["train end", "eval 0", "eval end"]
    assert _calls(stopped) == ["train end", "train end", "eval 0", "eval end"]

    # A lost end eval is measured again, nothing else; more steps train on.
    os.remove(os.path.join(sw.runs[1].workdir, "eval.json"))
    LocalRunner(sw, program=fake_program, echo=lambda m: None).run()
    assert _calls(sw.runs[1]) == ["train end", "eval 0", "eval end", "eval end"]
    longer = prepare(None, ["steps=3"], sw.grid, sw.seeds, sw.root)
    LocalRunner(longer, program=fake_program, echo=lambda m: None).run()
    assert _calls(sw.runs[1])[-2:] == ["train end", "eval end"]  # eval-0 is kept


def test_runner_reports_a_failed_run_and_goes_on(tmp_path, fake_program, monkeypatch):
    sw = _fake_sweep(str(tmp_path / "sw"))
    monkeypatch.setenv("FAKE_FAIL", "1")
    out = LocalRunner(sw, jobs=2, program=fake_program, echo=lambda m: None).run()
    assert [o.status for o in out] == ["done", "failed", "done", "failed"]
    assert "train exited with 3" in out[1].detail and "sweep.log" in out[1].detail
    log = open(os.path.join(sw.runs[1].workdir, "sweep.log")).read()
    assert "train exited with 3" in log


def test_job_env_splits_the_cores():
    env, cpus = job_env(0, 1, {"A": "1"})
    assert cpus is None and env == {"A": "1"}
    shares = [job_env(slot, 2, {})[1] for slot in range(2)]
    n = len(os.sched_getaffinity(0))
    if n >= 2:
        assert not set(shares[0]) & set(shares[1]) and len(shares[0]) == n // 2
    env, _ = job_env(1, 2, {"OMP_NUM_THREADS": "7"})
    assert env["OMP_NUM_THREADS"] == "7"  # the user's setting wins
    assert env["MKL_NUM_THREADS"] == str(max(1, n // 2))
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450"


# ------------------------------------------------------------------------------ the report


def _check_csv(text, seeds):
    """Recompute every row's mean and interval from its per-seed columns."""
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows
    for row in rows:
        values = [float(row[f"seed={s}"]) for s in seeds if row[f"seed={s}"] != ""]
        assert int(row["n"]) == len(values)
        mean = sum(values) / len(values)
        assert float(row["mean"]) == pytest.approx(mean, abs=1e-12)
        if len(values) > 1:
            s = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            half = {2: 12.7062047, 3: 4.30265273}[len(values)] * s / math.sqrt(len(values))
            assert float(row["ci_low"]) == pytest.approx(mean - half, abs=1e-7)
            assert float(row["ci_high"]) == pytest.approx(mean + half, abs=1e-7)
        else:
            assert row["ci_low"] == row["ci_high"] == ""
    return rows


def test_report_files_and_arithmetic(tmp_path, fake_program):
    root = str(tmp_path / "sw")
    sw = _fake_sweep(root, seeds=(0, 1, 2))
    LocalRunner(sw, jobs=2, program=fake_program, echo=lambda m: None).run()
    from reason_jax.sweep.report import write_report

    summary = write_report(sw)
    assert summary["runs_in_table"] == 6 and not summary["missing"]
    rows = _check_csv(open(os.path.join(root, "results.csv")).read(), [0, 1, 2])
    by = {(r["variant"], r["metric"]): r for r in rows}
    assert {m for _, m in by} == {"pass@1", "pass@2", "maj@2", "greedy", "start_pass@1",
                                  "gain_pass@1", "start_pass@2", "gain_pass@2"}
    # pass@2 is pass@1 + 0.1 at both ends in the fake, so its change equals pass@1's gain.
    assert [float(by[("rl.clip_high=0.35", "gain_pass@2")][f"seed={s}"]) for s in range(3)] == [
        pytest.approx(0.35)] * 3
    gain = by[("rl.clip_high=0.35", "gain_pass@1")]
    assert gain["rl.clip_high"] == "0.35"
    assert [float(gain[f"seed={s}"]) for s in range(3)] == [pytest.approx(0.35)] * 3
    p1 = by[("rl.clip_high=0.28", "pass@1")]
    assert [float(p1[f"seed={s}"]) for s in range(3)] == [
        pytest.approx(0.48), pytest.approx(0.49), pytest.approx(0.50)]
    md = open(os.path.join(root, "results.md")).read()
    # mean 0.49, s 0.01: 0.49 +- 4.30265 * 0.01 / sqrt(3) = [0.465, 0.515]
    assert "| rl.clip_high=0.28 | 3 | 0.490 [0.465, 0.515] |" in md
    assert "| rl.clip_high=0.35 | 3 | 0.560 [0.535, 0.585] |" in md
    png = open(os.path.join(root, "sweep.png"), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_lists_missing_runs(tmp_path, fake_program, monkeypatch):
    sw = _fake_sweep(str(tmp_path / "sw"))
    monkeypatch.setenv("FAKE_STOP", "0.28:0")
    LocalRunner(sw, program=fake_program, echo=lambda m: None).run()
    from reason_jax.sweep.report import write_report

    summary = write_report(sw)
    assert summary["missing"] == ["rl.clip_high=0.28/seed=0: no eval.json of step 2 yet"]
    md = open(os.path.join(sw.root, "results.md")).read()
    assert "| rl.clip_high=0.28 | 1 | 0.490 |" in md  # seed 1 alone: no interval
    assert "Not in the table yet" in md


def test_sweep_on_a_bucket(gcs_bucket, fake_program):
    from reason_jax import paths

    root = gcs_bucket.url("sweep1")
    sw = _fake_sweep(root)
    out = LocalRunner(sw, program=fake_program, echo=lambda m: None).run()
    assert [o.status for o in out] == ["done"] * 4
    from reason_jax.sweep.report import write_report

    write_report(sw)
    assert paths.exists(paths.join(root, "rl.clip_high=0.35", "seed=1", "sweep.log"))
    _check_csv(paths.read_text(paths.join(root, "results.csv")), [0, 1])
    assert paths.exists(paths.join(root, "sweep.png"))


# ---------------------------------------------------------------------------- launching


def test_print_launch_commands_parse_with_tpu_py(tmp_path):
    tpu = load_launch_script("tpu")
    sw = prepare("configs/countdown.py", ["steps=5"], parse_grid(["rl.algo=grpo,dapo"]),
                 [0, 1], "gs://bucket/sw")
    lines = launch_commands(sw, name="rj", zone="us-east5-a", accelerator="v5p-8",
                            extra=("--spot",))
    assert len(lines) == 4
    argv = shlex.split(lines[3])
    assert argv[:3] == ["python", "launch/tpu.py", "run"]
    args = tpu.parse_args(argv[2:])
    assert args.name == "rj-3" and args.provisioning == "spot"
    assert args.command[:2] == ["bash", "-c"]
    train, eval0, eval_end = (shlex.split(c) for c in args.command[2].split(" && "))
    wd = "gs://bucket/sw/rl.algo=dapo/seed=1"
    assert train == ["reason-jax", "train", "--config", "configs/countdown.py", "--workdir", wd,
                     "--config.steps=5", "--config.rl.algo=dapo", "--config.seed=1"]
    assert eval0 == ["reason-jax", "eval", *train[2:], "--step", "0"]
    assert eval_end == ["reason-jax", "eval", *train[2:]]


def test_bad_override_fails_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="rl.algo=nope"):
        sweep(None, [], ["rl.algo=dapo,nope"], "1", str(tmp_path))
    with pytest.raises(ConfigError, match="--seeds"):
        sweep(None, ["seed=3"], [], "1", str(tmp_path))
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------- end to end

TINY = [
    "steps=2", "sft.steps=3", "sft.batch_size=16", "rollout.batch_size=8", "rollout.group_size=4",
    "rollout.max_new_tokens=12", "rl.dynamic_sampling=False", "log.progress=False",
    "model.dim=32", "model.mlp_dim=64", "model.num_layers=1", "model.head_dim=16",
    "verifier.num_workers=1", "checkpoint.async_save=False", "eval.num_problems=8", "eval.k=2",
    "eval.batch_size=8",
]


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path):
    root = tmp_path / "sw"
    cmd = [sys.executable, "-m", "reason_jax", "sweep", "--grid", "rl.algo=grpo,cispo",
           "--seeds", "2", "--jobs", "2", "--workdir", str(root),
           *(f"--config.{o}" for o in TINY)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["runs"] == 4 and summary["runs_in_table"] == 4
    assert not summary["failed"] and not summary["incomplete"]
    for variant in ("rl.algo=grpo", "rl.algo=cispo"):
        for seed in (0, 1):
            wd = root / variant / f"seed={seed}"
            for name in ("metrics.jsonl", "config.json", "eval-0.json", "eval.json",
                         "sweep.log", "sweep-train.done"):
                assert (wd / name).exists(), (wd, name)
            config = json.loads((wd / "config.json").read_text())
            assert config["seed"] == seed and config["rl"]["algo"] == variant.split("=")[1]
            assert json.loads((wd / "eval.json").read_text())["step"] == 2
    assert json.loads((root / "rl.algo=cispo" / "seed=0" / "config.json").read_text())[
        "rl"]["loss"] == "cispo"
    rows = _check_csv((root / "results.csv").read_text(), [0, 1])
    assert {r["variant"] for r in rows} == {"rl.algo=grpo", "rl.algo=cispo"}
    for name in ("results.md", "sweep.png", "sweep.json"):
        assert (root / name).exists(), name

    # The same command again: every run is skipped, nothing is retrained or re-evaluated.
    logs = {p: p.read_text() for p in root.glob("*/seed=*/sweep.log")}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished earlier, skipped") == 4
    assert {p: p.read_text() for p in logs} == logs
