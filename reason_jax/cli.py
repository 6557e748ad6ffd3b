"""`reason-jax` command line (also `python -m reason_jax`).

  train      RL training (no --config: the built-in CPU recipe, SFT cold start then DAPO)
  sft        supervised warm start only
  eval       pass@1 / pass@k / maj@k on held-out prompts -> WORKDIR/eval.json
  sample     print completions of the latest checkpoint for a prompt
  import-hf  HF config.json + safetensors -> reason-jax checkpoint
  export-hf  reason-jax checkpoint -> HF safetensors + config.json
  bench      sampler | train-step | rl-step | verifier: one JSON object of measurements
  sweep      every --grid point x seed, evaluated: results.md, results.csv, sweep.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from reason_jax.sharding import distributed


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="configs/NAME.py[:VARIANT]; default: the built-in countdown recipe")
    p.add_argument("--workdir", default=None, help="run directory (checkpoints, metrics)")


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pull `--config.KEY=VALUE` (or `--config.KEY VALUE`) out of argv."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            body = a[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise SystemExit(f"error: {a} needs a value")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def _load(args, overrides):
    from reason_jax.config.loading import load_config

    return load_config(args.config, overrides)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "change your input", not "a bug": printed as one line naming what to
    change (a traceback only with --debug). Everything else is a bug and keeps its traceback."""
    from reason_jax.config.loading import ConfigError
    from reason_jax.data.bucketing import PromptTooLongError
    from reason_jax.data.prompts import BadRowError
    from reason_jax.models.hf_config import UnsupportedConfigError
    from reason_jax.paths import LocalPathRequired
    from reason_jax.rl.dynamic_sampling import DynamicSamplingError

    return (ConfigError, BadRowError, PromptTooLongError, UnsupportedConfigError,
            DynamicSamplingError, LocalPathRequired, FileNotFoundError, NotADirectoryError,
            PermissionError)


def _workdir(args, default="runs/countdown") -> str:
    return args.workdir or default


def cmd_train(args, overrides):
    from reason_jax.run.loop import train

    cfg = _load(args, overrides)
    summary = train(cfg, _workdir(args))
    keys = ("step", "reward/mean", "accuracy", "response_length/mean", "time/step_s")
    print(json.dumps({k: summary.get(k) for k in keys if k in summary}))


def cmd_sft(args, overrides):
    from reason_jax.run.sft_command import sft_only

    cfg = _load(args, overrides)
    print(json.dumps(sft_only(cfg, _workdir(args))))


def cmd_eval(args, overrides):
    from reason_jax.eval.run import evaluate

    cfg = _load(args, overrides)
    out = evaluate(cfg, _workdir(args), step=args.step)
    print(json.dumps(out, indent=2))


def cmd_sample(args, overrides):
    from reason_jax.eval.run import sample

    cfg = _load(args, overrides)
    for text in sample(cfg, _workdir(args), args.prompt, n=args.n,
                       temperature=args.temperature, max_new_tokens=args.max_new_tokens):
        print(text)


def cmd_import_hf(args, overrides):
    from reason_jax.run.hf_commands import import_hf

    info = import_hf(args.src, args.out, dtype=args.dtype)
    print(json.dumps(info))


def cmd_export_hf(args, overrides):
    from reason_jax.run.hf_commands import export_hf_cmd

    info = export_hf_cmd(args.workdir_or_dir, args.out, dtype=args.dtype)
    print(json.dumps(info))


def cmd_bench(args, overrides):
    from reason_jax import bench

    result = bench.run(args.what, args, overrides)
    print(json.dumps(result))


def cmd_sweep(args, overrides):
    from reason_jax.sweep import sweep

    launch = {"name": args.tpu_name, "zone": args.zone, "accelerator": args.accelerator,
              "extra": tuple(args.launch_arg)}
    out = sweep(args.config, overrides, args.grid, args.seeds, _workdir(args, "runs/sweep"),
                jobs=args.jobs, report_only=args.report_only, print_launch=args.print_launch,
                launch=launch)
    if args.print_launch:
        print(f"# {out['runs']} runs: one pod slice each (train, eval --step 0, eval); then "
              "`reason-jax sweep ... --report-only` with the same arguments")
        if "://" not in _workdir(args, "runs/sweep"):
            print("# note: the --workdir is local, i.e. a folder on each slice's VMs; give a "
                  "gs:// bucket path to collect the results")
        print("\n".join(out["launch"]))
        return
    print(json.dumps(out, indent=2))
    if out["failed"]:
        raise SystemExit(f"reason-jax sweep: {len(out['failed'])} run(s) failed; their logs "
                         "are named above")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reason-jax",
        description="JAX-native RL from verifiable rewards (GRPO/DAPO) for reasoning models.")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of user errors (bad config, paths, data)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="RL training (default: CPU countdown recipe); resumes")
    _config_args(t)
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sft", help="supervised warm start on gold answers")
    _config_args(s)
    s.set_defaults(fn=cmd_sft)

    e = sub.add_parser("eval", help="pass@1 / pass@k / maj@k -> WORKDIR/eval.json")
    _config_args(e)
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    e.set_defaults(fn=cmd_eval)

    sa = sub.add_parser("sample", help="print completions for a prompt")
    _config_args(sa)
    sa.add_argument("--prompt", required=True)
    sa.add_argument("-n", type=int, default=4)
    sa.add_argument("--temperature", type=float, default=1.0)
    sa.add_argument("--max-new-tokens", type=int, default=None)
    sa.set_defaults(fn=cmd_sample)

    i = sub.add_parser("import-hf", help="HF config.json + safetensors -> checkpoint")
    i.add_argument("src", help="local HF folder (its safetensors are memory-mapped: not gs://)")
    i.add_argument("out", help="output folder, local or gs://")
    i.add_argument("--dtype", default="float32", help="parameter dtype to store")
    i.set_defaults(fn=cmd_import_hf)

    x = sub.add_parser("export-hf", help="checkpoint -> HF safetensors + config.json")
    x.add_argument("workdir_or_dir", help="workdir or import-hf output, local or gs://")
    x.add_argument("out", help="output folder, local or gs://")
    x.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    x.set_defaults(fn=cmd_export_hf)

    b = sub.add_parser("bench", help="benchmarks: sampler | train-step | rl-step | verifier "
                       "(JSON out)")
    b.add_argument("what", choices=("sampler", "train-step", "rl-step", "verifier"))
    _config_args(b)
    b.add_argument("--dry-run", action="store_true",
                   help="train-step: print per-device memory estimates without running")
    b.add_argument("--no-hf", action="store_true", help="sampler: skip the transformers baseline")
    b.add_argument("--lengths", default=None, metavar="SPEC",
                   help="sampler: force per-sample lengths, e.g. "
                        "lognormal:median=128,sigma=0.8,max=512 or 64,512,128")
    b.add_argument("--max-rows", type=int, default=None, metavar="R",
                   help="sampler: decode slots of the continuous-batching run (default "
                        "rollout.max_rows, else N/4)")
    b.add_argument("--iters", type=int, default=3)
    b.set_defaults(fn=cmd_bench)

    w = sub.add_parser("sweep", help="grid x seeds of runs, evaluated -> results.md/.csv, "
                                     "sweep.png (resumable)")
    _config_args(w)
    w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key and its values (repeatable: the runs are the product)")
    w.add_argument("--seeds", default="1", help="K (seeds 0..K-1) or a list, e.g. 0,3,7")
    w.add_argument("--jobs", type=int, default=1,
                   help="local runs in parallel, each pinned to its share of the CPU cores")
    w.add_argument("--report-only", action="store_true",
                   help="only write results.md/.csv and sweep.png from what the runs hold")
    w.add_argument("--print-launch", action="store_true",
                   help="print one `python launch/tpu.py run` command per run instead")
    w.add_argument("--tpu-name", default="NAME",
                   help="--print-launch: queued-resource name prefix (run i -> NAME-i)")
    w.add_argument("--zone", default="ZONE", help="--print-launch: e.g. us-east5-a")
    w.add_argument("--accelerator", default="ACCELERATOR", help="--print-launch: e.g. v5p-32")
    w.add_argument("--launch-arg", action="append", default=[], metavar="ARG",
                   help="--print-launch: passed to tpu.py run as is (repeatable), e.g. "
                        "--launch-arg=--spot --launch-arg=--retries=3")
    w.set_defaults(fn=cmd_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if overrides and args.command in ("import-hf", "export-hf"):
        raise SystemExit(f"error: {args.command} takes no --config.* overrides")
    distributed.initialize()  # once, at the entry point (no-op on a single host)
    try:
        args.fn(args, overrides)
    except _user_errors() as e:
        if args.debug:
            raise
        raise SystemExit(f"reason-jax {args.command}: {_one_line(e)}") from None
    return 0


def _one_line(e: BaseException) -> str:
    from reason_jax.config.loading import ConfigError

    text = " ".join(str(e).split())
    return f"config error: {text}" if isinstance(e, ConfigError) else \
        f"{type(e).__name__}: {text}"
