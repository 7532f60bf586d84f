"""The run's manifest, ``manifest.json`` in the output directory, written by rank 0.

It holds the configuration (everything the samples depend on: model, sampler, ``n``, seed, batch and shard size,
format, dtype, device type, the fewstep and torch versions), the package versions, the last run's world size and
each rank's index ranges, every shard's record checksum, whether the set is complete, and the throughput. A rerun
whose configuration differs from the manifest's is refused (the directory is never overwritten), as is a
non-empty directory without a manifest.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "versions", "read_manifest", "check_directory", "write_manifest"]

MANIFEST = "manifest.json"


def versions() -> dict[str, str]:
    """The versions of Python and of the packages the samples depend on."""
    import numpy
    import torch

    from ... import __version__

    return {
        "fewstep": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest in ``out`` (None when there is none; ValueError naming ``out`` when it cannot be read)."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ValueError("no configuration")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"out: {path} is not a readable fewstep generate manifest ({err}); use another directory"
        ) from err
    return data


def check_directory(out: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The previous manifest of this configuration in ``out``, or None for a new run; ValueError when ``out`` holds
    another configuration's run or other files (it is never overwritten)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a directory")
    old = read_manifest(out) if out.is_dir() else None
    if old is None:
        if out.is_dir() and any(out.iterdir()):
            raise ValueError(f"out: {out} is not empty and holds no {MANIFEST}; give a new or empty directory")
        return None
    previous = old["config"]
    differ = sorted(k for k in {*previous, *config} if previous.get(k) != config.get(k))
    if differ:
        changes = "; ".join(f"{k}: {previous.get(k)!r} there, {config.get(k)!r} now" for k in differ)
        raise ValueError(
            f"out: {out} holds a run of another configuration ({changes}); give another directory, or the same "
            "options to resume it"
        )
    return old


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` to ``out/manifest.json`` through a temporary file and a rename."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
