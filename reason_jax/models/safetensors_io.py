"""Lazy safetensors reading (memory-mapped, slice by slice) and writing, without torch.

We parse the format ourselves (an 8-byte header length, a JSON header, raw little-endian
bytes) because the `safetensors` numpy API cannot represent bfloat16, and because reading
through `np.memmap` touches only the bytes of the slice a device needs. Memory maps need local
files, so reading is local only; writing goes through `reason_jax.paths` (local or gs://).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

from reason_jax import paths

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class TensorEntry:
    __slots__ = ("file", "dtype", "shape", "offset")

    def __init__(self, file, dtype, shape, offset):
        self.file, self.dtype, self.shape, self.offset = file, dtype, tuple(shape), offset

    def array(self) -> np.ndarray:
        """A read-only memory map: slicing it reads only the bytes of the slice."""
        if int(np.prod(self.shape)) == 0:
            return np.zeros(self.shape, self.dtype)
        return np.memmap(self.file, dtype=self.dtype, mode="r", offset=self.offset,
                         shape=self.shape)


def read_header(path: str) -> dict[str, TensorEntry]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, _ = info["data_offsets"]
        entries[name] = TensorEntry(path, _DTYPES[info["dtype"]], info["shape"], 8 + n + start)
    return entries


def index_checkpoint(folder: str) -> dict[str, TensorEntry]:
    """All tensors of a HF folder: `model.safetensors`, or shards listed in the index file."""
    folder = paths.require_local(folder, "HF safetensors are read through memory maps")
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p for p in os.listdir(folder) if p.endswith(".safetensors"))
        weight_map = None
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {folder}")
    entries: dict[str, TensorEntry] = {}
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"shard {name} listed in the index is missing from {folder}")
        entries.update(read_header(path))
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(entries))
        if missing:
            raise ValueError(f"tensor {missing[0]!r} is listed in the index but not in its shard")
    return entries


def write_file(path, tensors: Iterable[tuple[str, np.ndarray]],
               metadata: dict[str, str] | None = None) -> None:
    """Write tensors as one safetensors file, local or gs:// (it appears only once complete)."""
    tensors = list(tensors)
    header, offset = {}, 0
    for name, arr in tensors:
        nbytes = arr.size * arr.dtype.itemsize
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    with paths.atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, arr in tensors:
            f.write(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
