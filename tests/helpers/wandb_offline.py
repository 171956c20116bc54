"""Read an offline W&B run file (``run-*.wandb``) without a server.

The file is a LevelDB-style log (7-byte file header ``:W&B`` + magic + version, then 32 KiB
blocks of records with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST) of
``wandb_internal_pb2.Record`` protobufs. Current wandb ships no reader for it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

_BLOCK = 32768
_HEADER = 7


def _payloads(raw: bytes) -> Iterator[bytes]:
    assert raw[:4] == b":W&B", "not a W&B run file"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(raw):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + _HEADER])
        pos += _HEADER
        data = raw[pos : pos + length]
        pos += length
        if kind == 1:
            yield data
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        elif kind == 4:
            yield pending + data
            pending = b""


def read_run(path: str | Path) -> dict[str, set[str]]:
    """``{"history": keys logged, "config": config keys, "types": record types}``."""
    from wandb.proto import wandb_internal_pb2

    out: dict[str, set[str]] = {"history": set(), "config": set(), "types": set()}
    for data in _payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        out["types"].add(kind)
        if kind == "history":
            out["history"].update(i.key or "/".join(i.nested_key) for i in record.history.item)
        elif kind == "config":
            out["config"].update(i.key or "/".join(i.nested_key) for i in record.config.update)
    return out
