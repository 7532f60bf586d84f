"""``fewstep.generate``: many samples over torch.distributed, resumable, identical for any world size.

- :mod:`.seeds`: per-index noise streams;
- :mod:`.indices`: shards of the index range and their assignment to ranks;
- :mod:`.shards`: writing a shard and verifying it (``npz`` or PNG, :mod:`.png`);
- :mod:`.manifest`: the run's configuration, index ranges, checksums and throughput;
- :mod:`.distributed`: the process group from torchrun's environment;
- :mod:`.models`: the embedded targets and the user's model factory;
- :mod:`.run`: :func:`generate`.
"""

from __future__ import annotations

from .run import generate

__all__ = ["generate"]
