"""Writing the files of a ``fewstep compare`` run safely.

Every file is written whole or not at all (:func:`atomic_write_bytes`, :func:`atomic_write_text`: a temporary
file in the same directory, then :func:`os.replace`). The CLI writes a run's files into a staging directory next
to the output directory (:func:`staging`), then :func:`publish` moves them into place one by one, removes the
outputs of an earlier run that this run did not write (those listed in the previous ``manifest.json`` only; a
file never listed in a manifest is the user's and stays) and writes ``manifest.json`` last: every file of the run
with its size and SHA-256, the settings, the fewstep version and the UTC time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST",
    "atomic_write_bytes",
    "atomic_write_text",
    "publish",
    "read_manifest",
    "sha256",
    "staging",
    "verified",
]

MANIFEST = "manifest.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it: readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The ``manifest.json`` in ``out``, or None when it is missing or unreadable."""
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return data


def _listed(manifest: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The plain file names a manifest lists (anything with a path separator is ignored)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in (manifest or {}).get("files", []):
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name not in ("", ".", "..", MANIFEST) and Path(name).name == name:
            out[name] = entry
    return out


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh directory next to ``out`` (inside it where its parent is not writable), removed on exit."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.resolve().name}.", suffix=".tmp", dir=out.resolve().parent))
    except OSError:
        stage = Path(tempfile.mkdtemp(prefix=".fewstep-", suffix=".tmp", dir=out))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, out: Path, settings: dict[str, Any], version: str) -> dict[str, Any]:
    """Move every file in ``stage`` into ``out``, remove the previous run's outputs this run did not write, and
    write ``manifest.json`` last. Returns the manifest."""
    names = sorted(p.name for p in stage.iterdir() if p.is_file() and p.name != MANIFEST)
    files = [{"name": n, "size": (stage / n).stat().st_size, "sha256": sha256(stage / n)} for n in names]
    previous = _listed(read_manifest(out))
    for n in names:
        os.replace(stage / n, out / n)
    for stale in sorted(set(previous) - set(names)):
        (out / stale).unlink(missing_ok=True)
    manifest = {
        "fewstep_version": version,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "files": files,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def verified(out: Path, name: str, version: str) -> str | None:
    """Why ``out / name`` cannot be trusted as this fewstep version's output, or None when it can: it must be
    listed in ``manifest.json`` with its current size and SHA-256, by the same fewstep version."""
    manifest = read_manifest(out)
    if manifest is None:
        return f"no readable {MANIFEST}"
    entry = _listed(manifest).get(name)
    path = out / name
    if entry is None or not path.is_file():
        return f"{name} is not listed in {MANIFEST}"
    if entry.get("size") != path.stat().st_size or entry.get("sha256") != sha256(path):
        return f"{name} does not match {MANIFEST}"
    if manifest.get("fewstep_version") != version:
        return f"it was written by fewstep {manifest.get('fewstep_version')}, this is {version}"
    return None
