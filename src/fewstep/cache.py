"""fewstep's on-disk cache: trained weights (learned target, the digits feature network) and DPM-Solver-v3's
empirical model statistics, under the user's cache directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["cache_dir", "save_atomic", "load_cached"]


def cache_dir() -> Path:
    """Where fewstep caches trained weights: ``$XDG_CACHE_HOME/fewstep`` when ``XDG_CACHE_HOME`` is set, else
    ``platformdirs.user_cache_dir("fewstep")`` when platformdirs is installed, else ``~/.cache/fewstep``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / "fewstep"
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path("~/.cache").expanduser() / "fewstep"
    return Path(user_cache_dir("fewstep", appauthor=False))


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cached(path: Path, version: str) -> dict[str, Any] | None:
    """The dictionary saved at ``path``, or None if it is missing, unreadable or of another version."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt or foreign file: retrain and overwrite
        return None
    return blob if isinstance(blob, dict) and blob.get("version") == version else None
