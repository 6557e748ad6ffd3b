"""Device mesh from config: axes ('dcn_data', 'data', 'fsdp', 'tensor').

`dcn_data` spans slices (data-center network); the other axes live inside a slice (ICI).
One size may be -1 and is filled from the device count.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

AXES = ("dcn_data", "data", "fsdp", "tensor")


def resolve_sizes(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    unknown = sorted(set(sizes) - set(AXES))
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; valid: {AXES}")
    out = {a: int(sizes.get(a, 1)) for a in AXES}
    fill = [a for a, v in out.items() if v == -1]
    if len(fill) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {fill}")
    if any(v == 0 or v < -1 for v in out.values()):
        raise ValueError(f"mesh sizes must be positive or -1, got {out}")
    known = math.prod(v for v in out.values() if v != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"cannot fill mesh axis {fill[0]!r}: {num_devices} devices are not "
                             f"divisible by the other axes' product {known}")
        out[fill[0]] = num_devices // known
    if math.prod(out.values()) != num_devices:
        raise ValueError(f"mesh {out} needs {math.prod(out.values())} devices, have {num_devices}")
    return out


def make_mesh(sizes: Mapping[str, int] | None = None, devices=None) -> Mesh:
    """Build the mesh. Multi-slice (dcn_data > 1) uses a hybrid ICI x DCN device layout."""
    devices = list(devices if devices is not None else jax.devices())
    s = resolve_sizes(sizes or {"data": -1}, len(devices))
    ici = (1, s["data"], s["fsdp"], s["tensor"])
    if s["dcn_data"] > 1 and hasattr(devices[0], "slice_index"):
        dev = mesh_utils.create_hybrid_device_mesh(ici, (s["dcn_data"], 1, 1, 1), devices)
    else:
        shape = (s["dcn_data"],) + ici[1:]
        try:
            dev = mesh_utils.create_device_mesh(shape, devices)
        except (ValueError, NotImplementedError, AssertionError):
            dev = np.asarray(devices).reshape(shape)
    return Mesh(dev, AXES)


def data_size(mesh: Mesh) -> int:
    """How many ways the batch is split (product of the data-like axes)."""
    return mesh.shape["dcn_data"] * mesh.shape["data"] * mesh.shape["fsdp"]
