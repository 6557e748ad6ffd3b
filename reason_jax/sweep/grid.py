"""The sweep's plan: `--grid KEY=V1,V2` axes x seeds -> one `SweepRun` per point and seed.

A run's directory is `ROOT/<variant>/seed=<s>`, the variant being its grid values in grid
order, `rl.algo=dapo,rl.clip_high=0.28` (`base` for an empty grid): readable in `ls`, and the
same name in results.md, results.csv and sweep.png. Values are the text the user typed, passed
on as `--config.KEY=VALUE`, so they parse exactly as any other override.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re

from reason_jax import paths
from reason_jax.config.loading import ConfigError

BASE_VARIANT = "base"
# Kept in directory names; anything else (a '/' in a path value, spaces, quotes) becomes '_'.
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+@-]")
_MAX_NAME = 120


class GridError(ConfigError):
    """A --grid / --seeds argument that cannot be planned (a user error, one line)."""


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One training run of the sweep: a grid point (`values`, KEY -> VALUE text) and a seed."""

    index: int
    variant: str
    values: tuple[tuple[str, str], ...]
    seed: int
    workdir: str

    @property
    def name(self) -> str:
        return f"{self.variant}/seed={self.seed}"

    def overrides(self, common: list[str]) -> list[str]:
        """`KEY=VALUE` overrides of this run: the ones for every run, its grid values, its seed
        (last, so it wins)."""
        return [*common, *(f"{k}={v}" for k, v in self.values), f"seed={self.seed}"]


def split_values(text: str) -> list[str]:
    """`a,b,(1,2),"x,y"` -> ['a', 'b', '(1,2)', '"x,y"']: commas inside brackets or quotes
    belong to the value (tuple- and list-valued keys such as data.buckets)."""
    values, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    if quote or depth:
        raise GridError(f"unbalanced brackets or quotes in {text!r}")
    return [v.strip() for v in values]


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """`["rl.algo=grpo,dapo", "rl.clip_high=0.28,0.35"]` -> [(key, values), ...] in the order
    given. Keys are config keys as in `--config.KEY` (a leading `config.` is accepted)."""
    axes: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, eq, raw = spec.partition("=")
        key = key.strip().removeprefix("--").removeprefix("config.")
        if not eq or not key:
            raise GridError(f"--grid {spec!r} must look like KEY=V1,V2,...")
        if key == "seed":
            raise GridError("seeds are set with --seeds K (or --seeds 0,3,7), not --grid seed=...")
        if any(key == k for k, _ in axes):
            raise GridError(f"--grid names {key!r} twice; give all its values in one --grid")
        values = split_values(raw)
        if any(v == "" for v in values):
            raise GridError(f"--grid {spec!r} has an empty value")
        if len(set(values)) != len(values):
            raise GridError(f"--grid {spec!r} repeats a value")
        axes.append((key, values))
    return axes


def parse_seeds(text: str | int) -> list[int]:
    """`3` -> [0, 1, 2] (K seeds); `0,5,7` -> [0, 5, 7] (these seeds)."""
    text = str(text).strip()
    try:
        if "," not in text:
            k = int(text)
            if k < 1:
                raise GridError(f"--seeds {text}: need at least one seed")
            return list(range(k))
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise GridError(f"--seeds {text!r}: expected K or a list like 0,3,7") from None
    if len(set(seeds)) != len(seeds):
        raise GridError(f"--seeds {text!r} repeats a seed")
    return seeds


def variant_name(values: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in values) or BASE_VARIANT


def path_name(name: str) -> str:
    """`name` as one path component. A name that had to change (unsafe characters, length)
    gets a short hash of the original, so two variants never share a directory."""
    safe = _UNSAFE.sub("_", name)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if safe == name and len(safe) <= _MAX_NAME:
        return safe
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{safe[:_MAX_NAME]}-{digest}"


def run_dir(root: str, *parts: str) -> str:
    """`root/parts...` as text, a `gs://` root kept as is (no client needed, so a sweep can be
    planned with --print-launch where gcsfs is not installed)."""
    return paths.join(root, *parts)


def plan(grid: list[tuple[str, list[str]]], seeds: list[int], root: str) -> list[SweepRun]:
    """Every grid point x seed, variants in grid order (the first axis varies slowest), seeds
    inner. The order is stable across invocations, so run indices (and --print-launch's
    slice names) stay the same when a sweep is resumed."""
    keys = [k for k, _ in grid]
    points = itertools.product(*(values for _, values in grid)) if grid else [()]
    runs = []
    for point in points:
        values = tuple(zip(keys, point))
        variant = variant_name(values)
        for seed in seeds:
            workdir = run_dir(root, path_name(variant), f"seed={seed}")
            runs.append(SweepRun(len(runs), variant, values, seed, workdir))
    return runs
