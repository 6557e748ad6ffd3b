"""Small helpers shared by several test modules (pytest puts tests/ on sys.path)."""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reason_jax.models.transformer import Transformer

ROOT = Path(__file__).resolve().parents[1]


def load_launch_script(name: str):
    """launch/ holds scripts, not a package: load one under a unique module name."""
    path = ROOT / "launch" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"launch_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def random_params(cfg, seed: int, scale: float):
    """(graphdef, pure param dict) with every weight random: N(0, scale), norms 1 + N(0, 0.2).
    HF-style init would leave biases 0 and norms 1, hiding layout bugs."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        name = jax.tree_util.keystr(path)
        return jnp.asarray(1.0 + 0.2 * noise if "norm" in name else scale * noise)

    return graphdef, jax.tree_util.tree_map_with_path(fill, state.to_pure_dict())


def read_tb_events(logdir: str):
    """Every Event protobuf in the TFRecord event files under `logdir`, in file order."""
    import struct

    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
            pos += 12 + n + 4
    return events


def read_tb_scalars(logdir: str) -> dict:
    """tag -> [(step, value)] as TensorBoard shows it: a SessionLog START at step s (a
    resumed run) drops the earlier points at steps >= s."""
    out: dict = {}
    for e in read_tb_events(logdir):
        if e.HasField("session_log") and e.session_log.status == 1 and e.step:
            out = {k: [(s, v) for s, v in pts if s < e.step] for k, pts in out.items()}
        for v in e.summary.value:
            out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out
