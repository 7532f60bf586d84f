"""Writing and verifying shards: a shard is done when its record lists files whose checksums match.

A shard's files (``shards/shard-KKKKKK.npz`` holding the arrays ``indices`` and ``samples``, or one
``images/IIIIII.png`` per sample) are each written to a temporary name and renamed into place, then its record
``shards/shard-KKKKKK.json`` (the shard, its index range and each file's SHA-256) is written the same way, last. A
process killed at any point leaves either no record, or a record whose files are all in place: a shard without a
record, with an unreadable record, or with a file missing or changed since (a truncated copy, a disk error) is not
done, and is generated again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .indices import Shard
from .png import png_bytes, to_uint8

__all__ = ["FORMATS", "shard_record_path", "write_shard", "verify_shard", "sha256_file"]

#: The output formats.
FORMATS = ("npz", "png")


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_record_path(out: Path, shard: Shard) -> Path:
    return out / "shards" / f"shard-{shard.number:06d}.json"


def _image_name(index: int, n: int) -> str:
    return f"images/{index:0{max(6, len(str(n - 1)))}d}.png"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npz_bytes(indices: np.ndarray, samples: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, indices=indices, samples=samples)
    return buffer.getvalue()


def write_shard(
    out: Path, shard: Shard, n: int, samples: np.ndarray, fmt: str, data_range: tuple[float, float]
) -> dict[str, Any]:
    """Write ``samples`` (one per index of ``shard``) in format ``fmt``, then the shard's record; return the record."""
    files: dict[str, str] = {}
    if fmt == "npz":
        data = _npz_bytes(np.arange(shard.start, shard.stop, dtype=np.int64), samples)
        name = f"shards/shard-{shard.number:06d}.npz"
        _write_atomic(out / name, data)
        files[name] = hashlib.sha256(data).hexdigest()
    else:
        for index, sample in zip(shard.indices, samples, strict=True):
            data = png_bytes(to_uint8(sample, data_range))
            name = _image_name(index, n)
            _write_atomic(out / name, data)
            files[name] = hashlib.sha256(data).hexdigest()
    record = {"shard": shard.number, "start": shard.start, "stop": shard.stop, "format": fmt, "files": files}
    text = json.dumps(record, indent=1, sort_keys=True).encode()
    _write_atomic(shard_record_path(out, shard), text)
    return {**record, "sha256": hashlib.sha256(text).hexdigest()}


def verify_shard(out: Path, shard: Shard, fmt: str) -> tuple[dict[str, Any] | None, str]:
    """The shard's record (with the record's own SHA-256) when the shard is done, else None; and why not."""
    path = shard_record_path(out, shard)
    if not path.is_file():
        return None, "not written"
    try:
        text = path.read_bytes()
        record = json.loads(text)
        files = record["files"]
        same = (record["shard"], record["start"], record["stop"], record["format"]) == (
            shard.number,
            shard.start,
            shard.stop,
            fmt,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None, "unreadable record"
    if not same or not isinstance(files, dict) or len(files) != (1 if fmt == "npz" else len(shard)):
        return None, "record of another shard"
    for name, digest in files.items():
        file = out / name
        if not file.is_file():
            return None, f"{name} missing"
        if sha256_file(file) != digest:
            return None, f"{name} changed or half-written"
    return {**record, "sha256": hashlib.sha256(text).hexdigest()}, "done"
