"""``fewstep generate`` at 1 and 2 processes, side by side: samples/s and model evaluations/s.

Each configuration runs ``fewstep generate`` in fresh output directories, one process with ``python -m fewstep``
and ``P`` processes with ``torchrun --standalone --nproc_per_node P`` (gloo on the CPU), every process with one
thread (``OMP_NUM_THREADS=1``). The workload is model-bound: the embedded ``image`` target (the exact denoiser of a
256-component mixture of 3 x 32 x 32 images, float64 inside), dpmpp_2m at NFE 10. The throughput is the manifest's:
samples generated over the slowest rank's generation time (start-up, imports and the process group are left out).
The rounds alternate 1 and ``P`` processes; the table gives each round and the best of each. The script also checks
that the runs' samples are identical index by index.

Usage: ``python benchmarks/generate.py [--samples 320] [--batch 16] [--processes 2] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def run(processes: int, out: Path, samples: int, batch: int, nfe: int) -> dict[str, float]:
    """One ``fewstep generate`` run; its manifest's throughput."""
    launcher = [sys.executable, "-m", "fewstep"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        launcher += ["-m", "fewstep"]
    args = ["generate", "--samples", str(samples), "--out", str(out), "--model", "image", "--solver", "dpmpp_2m"]
    args += ["--nfe", str(nfe), "--batch", str(batch), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*launcher, *args], env=env, check=True, capture_output=True, text=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"], out
    return manifest["throughput"]


def samples_of(out: Path) -> np.ndarray:
    parts = [np.load(p) for p in sorted((out / "shards").glob("shard-*.npz"))]
    order = np.argsort(np.concatenate([p["indices"] for p in parts]))
    return np.concatenate([p["samples"] for p in parts])[order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    a = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores; image target, dpmpp_2m, NFE {a.nfe}, ")
    print(f"{a.samples} samples, batch {a.batch}, 1 thread per process\n")
    print("| round | processes | samples/s | model evaluations/s | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    best: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for r in range(1, a.rounds + 1):
            one = 0.0
            for p in (1, a.processes):
                out = Path(tmp) / f"r{r}-p{p}"
                t = run(p, out, a.samples, a.batch, a.nfe)
                got = samples_of(out)
                reference = got if reference is None else reference
                assert np.array_equal(got, reference), "samples differ between runs"
                one = t["samples_per_s"] if p == 1 else one
                speed = f"{t['samples_per_s'] / one:.2f}x" if p > 1 else "1.00x"
                print(f"| {r} | {p} | {t['samples_per_s']:.2f} | {t['model_evaluations_per_s']:.1f} | {speed} |")
                best[p] = max(best.get(p, 0.0), t["samples_per_s"])
    print(
        f"\nbest: 1 process {best[1]:.2f} samples/s, {a.processes} processes {best[a.processes]:.2f} samples/s "
        f"({best[a.processes] / best[1]:.2f}x); samples identical in every run"
    )


if __name__ == "__main__":
    main()
