"""A dependency-free TensorBoard event-file writer (and reader) for scalar summaries.

TensorBoard reads `events.out.tfevents.*` files: a sequence of TFRecords, each holding one
serialized `tensorflow.Event` protobuf. Pulling in TensorFlow, tensorboardX or even protobuf for
a handful of floats per step is not worth the dependency (and the import time on every host),
so the few messages we need are encoded by hand:

    TFRecord:  uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
    Event:     1 wall_time (double) | 2 step (int64) | 3 file_version (string)
               | 5 summary (Summary) | 7 session_log (SessionLog)
    Summary:   1 value (repeated Value)
    Value:     1 tag (string) | 2 simple_value (float)
    SessionLog: 1 status (enum; START = 1)

The reader (`read_events`, `read_scalars`) exists so tests and tools can check files without
TensorBoard installed; it verifies both CRCs of every record. Only local paths are supported.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

__all__ = ["EventWriter", "crc32c", "masked_crc32c", "read_events", "read_scalars"]

# --------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), reflected polynomial 0x82F63B78. A table-driven pure-Python loop is
# plenty: a scalar event is a few hundred bytes at most once per training step.


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (the checksum TFRecord framing uses)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant.

    TensorFlow masks the CRC because computing the CRC of data that itself embeds CRCs is
    otherwise prone to degenerate results; readers must apply the same mask.
    """
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Protobuf wire format: just the pieces the Event message needs.

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    # int64 fields encode negative numbers as their 64-bit two's complement (10 bytes).
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:
        # Finite doubles beyond float32's range: saturate the way a float32 cast would.
        return struct.pack("<f", math.copysign(math.inf, value))


def _encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                  summary: bytes | None = None, session_start: bool = False) -> bytes:
    out = _key(1, _FIXED64) + struct.pack("<d", wall_time)
    if step:  # proto3 omits default values
        out += _key(2, _VARINT) + _varint(step)
    if file_version is not None:
        out += _len_field(3, file_version.encode())
    if summary is not None:
        out += _len_field(5, summary)
    if session_start:
        out += _len_field(7, _key(1, _VARINT) + _varint(1))  # SessionLog{status: START}
    return out


def _encode_summary(values: Mapping[str, float]) -> bytes:
    out = b""
    for tag, value in values.items():
        value_msg = _len_field(1, tag.encode()) + _key(2, _FIXED32) + _float32(value)
        out += _len_field(1, value_msg)
    return out


def _frame(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


def _as_float(value: Any) -> float | None:
    """A Python float for scalar-like values (numbers, bools, numpy/jax 0-d arrays), else None."""
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------


class EventWriter:
    """Writes scalar summaries to `logdir/events.out.tfevents.<time>.<host>`.

    Every call to `scalars` writes one Event holding all the given values, so a training step's
    metrics share a wall time and step. Non-numeric values (strings, lists) are skipped;
    non-finite values are kept (TensorBoard shows NaN/inf). Output is buffered: call `flush`
    to make it visible to a running TensorBoard (the metrics writer does so every step).
    """

    def __init__(self, logdir: str, *, filename_suffix: str = ""):
        os.makedirs(logdir, exist_ok=True)
        base = os.path.join(
            logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
                    f"{filename_suffix}")
        # A second writer within the same second (a quick restart) must not clobber the first.
        path, n = base, 0
        while os.path.exists(path):
            n += 1
            path = f"{base}.{n}"
        self.path = path
        self._file: BinaryIO | None = open(path, "wb")
        self._write(_encode_event(time.time(), 0, file_version="brain.Event:2"))
        self.flush()

    def _write(self, event: bytes) -> None:
        if self._file is None:
            raise ValueError(f"EventWriter for {self.path} is closed")
        self._file.write(_frame(event))

    def scalars(self, step: int, values: Mapping[str, Any], *,
                wall_time: float | None = None) -> None:
        """Record `values` (tag -> number) at `step`; entries that are not numbers are skipped."""
        floats = {str(tag): f for tag, v in values.items() if (f := _as_float(v)) is not None}
        if not floats:
            return
        self._write(_encode_event(time.time() if wall_time is None else wall_time, int(step),
                                  summary=_encode_summary(floats)))

    def session_start(self, step: int) -> None:
        """Mark a restart at `step`: TensorBoard then drops previously logged points at
        steps >= `step`, which are about to be recomputed after resuming from a checkpoint."""
        self._write(_encode_event(time.time(), int(step), session_start=True))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Reading back.


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, raw value) for each field of a serialized message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire_type == _FIXED64:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire_type == _LEN:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire_type == _FIXED32:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        yield field, wire_type, value


def _decode_event(data: bytes) -> dict[str, Any]:
    event: dict[str, Any] = {"wall_time": 0.0, "step": 0}
    for field, _, value in _fields(data):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            values = event.setdefault("summary", {})
            for vfield, _, vmsg in _fields(value):
                if vfield != 1:
                    continue
                tag, simple = None, None
                for f, _, v in _fields(vmsg):
                    if f == 1:
                        tag = v.decode()
                    elif f == 2:
                        simple = struct.unpack("<f", v)[0]
                if tag is not None and simple is not None:
                    values[tag] = simple
        elif field == 7:
            for f, _, v in _fields(value):
                if f == 1:
                    event["session_log_status"] = v
    return event


def read_events(path: str) -> Iterator[dict[str, Any]]:
    """Decode an event file into dicts: wall_time, step, and file_version / summary
    ({tag: simple_value}) / session_log_status where present. Raises ValueError on a CRC
    mismatch; a truncated final record (a writer killed mid-write) ends the iteration."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                raise ValueError(f"{path}: corrupt record length")
            data, footer = f.read(length), f.read(4)
            if len(data) < length or len(footer) < 4:
                return
            if struct.unpack("<I", footer)[0] != masked_crc32c(data):
                raise ValueError(f"{path}: corrupt record data")
            yield _decode_event(data)


def read_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from an event file, or from every event file of a directory
    (in file-name order, i.e. creation time)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if "tfevents" in n)
    else:
        files = [path]
    out: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        for event in read_events(file):
            for tag, value in event.get("summary", {}).items():
                out.setdefault(tag, []).append((event["step"], value))
    return out
