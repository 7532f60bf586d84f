"""``fewstep generate``: per-index seeds, shards, resumption, refusals, PNG output, per-index conditioning, and
(slow) torchrun with two processes against one process, and a rank killed mid-run."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fewstep
from fewstep.bench.cli import main
from fewstep.bench.generation.indices import assign, make_shards
from fewstep.bench.generation.seeds import index_seed

SRC = Path(fewstep.__file__).resolve().parents[1]

#: A small, fast configuration: the 2-D mixture with its exact denoiser.
SMALL = {"model": "default", "nfe": 6, "dtype": "float64", "progress": False}


def _samples(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every npz shard of ``out`` merged: (indices, samples), sorted by index."""
    parts = [np.load(p) for p in sorted((out / "shards").glob("shard-*.npz"))]
    indices = np.concatenate([p["indices"] for p in parts])
    samples = np.concatenate([p["samples"] for p in parts])
    order = np.argsort(indices)
    return indices[order], samples[order]


def _tree(out: Path) -> dict[str, str]:
    """Every file of ``out`` (hidden ones too) and its SHA-256."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------- seeds, shards


def test_index_seeds_are_distinct_in_the_bits_a_cpu_generator_keeps() -> None:
    """Every index of a run gets its own 32-bit CPU stream, and another base seed other streams."""
    lows = {index_seed(7, i) & 0xFFFFFFFF for i in range(20_000)}
    assert len(lows) == 20_000
    other = {index_seed(8, i) & 0xFFFFFFFF for i in range(20_000)}
    assert len(lows & other) < 20  # about 20_000**2 / 2**32 ~ 0.1 expected by chance
    assert index_seed(7, 3) != index_seed(8, 3) and index_seed(7, 3) == index_seed(7, 3)


@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
def test_every_shard_goes_to_exactly_one_rank(layout: str) -> None:
    shards = make_shards(103, 10)
    assert [len(s) for s in shards] == [10] * 10 + [3]
    for world in (1, 2, 3, 7, 16):
        taken = [s.number for r in range(world) for s in assign(shards, r, world, layout)]
        assert sorted(taken) == list(range(11))


# ----------------------------------------------------------------------------------- one process: the API


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_2m_sde"])
def test_a_sample_depends_on_its_index_only(tmp_path: Path, solver: str) -> None:
    """The same indices give the same samples at another batch size, shard size and n; another seed others."""
    fewstep.generate(10, tmp_path / "a", solver=solver, batch=4, **SMALL)  # type: ignore[arg-type]
    fewstep.generate(13, tmp_path / "b", solver=solver, batch=1, shard_size=5, **SMALL)  # type: ignore[arg-type]
    fewstep.generate(10, tmp_path / "c", solver=solver, batch=4, seed=1, **SMALL)  # type: ignore[arg-type]
    ia, a = _samples(tmp_path / "a")
    ib, b = _samples(tmp_path / "b")
    _, c = _samples(tmp_path / "c")
    assert ia.tolist() == list(range(10)) and ib.tolist() == list(range(13))
    np.testing.assert_allclose(b[:10], a, rtol=1e-5, atol=1e-8)
    assert np.all(np.abs(a - c).max(axis=1) > 1e-3)  # another base seed: every sample differs
    assert len({tuple(np.round(s, 6)) for s in a}) == 10  # no two indices share their noise


def test_resume_redoes_damaged_shards_only(tmp_path: Path) -> None:
    """A truncated shard, a shard without its record and a stray temporary file are redone, to the same bits;
    the shards that verify are not generated again."""
    out = tmp_path / "run"
    first = fewstep.generate(12, out, solver="euler_ancestral", batch=3, **SMALL)  # type: ignore[arg-type]
    assert first["complete"] and first["throughput"]["samples_generated"] == 12
    _, before = _samples(out)
    npz = out / "shards" / "shard-000001.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])  # half-written
    (out / "shards" / "shard-000002.json").unlink()  # killed before its record
    (out / "shards" / ".shard-000003.npz.tmp-1").write_bytes(b"partial")
    again = fewstep.generate(12, out, solver="euler_ancestral", batch=3, **SMALL)  # type: ignore[arg-type]
    assert again["complete"]
    assert again["throughput"]["samples_generated"] == 6 and again["throughput"]["samples_reused"] == 6
    _, after = _samples(out)
    np.testing.assert_array_equal(after, before)
    third = fewstep.generate(12, out, solver="euler_ancestral", batch=3, **SMALL)  # type: ignore[arg-type]
    assert third["throughput"]["samples_generated"] == 0
    assert [h["samples_generated"] for h in third["history"]] == [12, 6, 0]


def test_another_configuration_or_foreign_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fewstep.generate(4, out, solver="dpmpp_2m", batch=2, **SMALL)  # type: ignore[arg-type]
    files = _tree(out)
    with pytest.raises(ValueError, match=r"out: .* another configuration \(seed: 0 there, 5 now\)"):
        fewstep.generate(4, out, solver="dpmpp_2m", batch=2, seed=5, **SMALL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch: 2 there, 4 now"):
        fewstep.generate(4, out, solver="dpmpp_2m", batch=4, **SMALL)  # type: ignore[arg-type]
    assert _tree(out) == files  # nothing written
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no manifest.json"):
        fewstep.generate(4, foreign, solver="dpmpp_2m", **SMALL)  # type: ignore[arg-type]
    assert _tree(foreign) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}


FACTORIES = '''
import os, signal
import torch
import fewstep
from fewstep.bench.user_model import UserModel

def point_masses():
    """Data: a point mass at the sample's class label (label = index mod 3), predicted exactly (epsilon)."""
    schedule = fewstep.VP()

    def model(x, t, labels):
        a, s = schedule.alpha(t).to(x).reshape(-1, 1), schedule.sigma(t).to(x).reshape(-1, 1)
        mu = labels.to(x)[:, None].expand_as(x)
        return (x - a * mu) / s

    return UserModel(model, schedule, "epsilon", (2,), time_input="t",
                     conditioning=lambda i: {"labels": (i % 3).double()}, data_range=(0.0, 2.0))

def broken():
    raise RuntimeError("no weights here")

def killed_rank_one():
    """The 2-D mixture; rank 1 kills itself at its 7th model call (its second shard) when KILL_RANK_ONE is set."""
    from fewstep.bench.generation.models import resolve_model
    user = resolve_model("default")
    inner, calls = user.model, [0]
    def model(x, t):
        calls[0] += 1
        if os.environ.get("KILL_RANK_ONE") and os.environ.get("RANK") == "1" and calls[0] == 7:
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(x, t)
    return model, user.schedule, user.prediction, user.shape
'''


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "gen_factories.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_per_index_conditioning_and_png_data_range(factories: Path) -> None:
    """Sample i of a point mass at label i mod 3 is that label; PNGs map the declared range [0, 2] to 0..255."""
    opts = {"model": "gen_factories:point_masses", "solver": "dpmpp_2m", "nfe": 5, "progress": False}
    fewstep.generate(7, factories / "npz", batch=3, **opts)  # type: ignore[arg-type]
    indices, samples = _samples(factories / "npz")
    np.testing.assert_allclose(samples, (indices % 3)[:, None].repeat(2, axis=1), atol=1e-3)
    with pytest.raises(ValueError, match=r"format: 'png' needs samples of shape"):
        fewstep.generate(7, factories / "png", format="png", **opts)  # type: ignore[arg-type]
    fewstep.generate(4, factories / "png", format="png", model="digits", solver="dpmpp_2m", nfe=3, progress=False)
    fewstep.generate(4, factories / "ref", model="digits", solver="dpmpp_2m", nfe=3, progress=False)
    _, ref = _samples(factories / "ref")
    for i in range(4):
        data = (factories / "png" / "images" / f"{i:06d}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
        assert (width, height, depth, colour) == (8, 8, 8, 0)
        raw = np.frombuffer(zlib.decompress(data[41 : data.index(b"IEND") - 8]), np.uint8).reshape(8, 9)
        assert np.all(raw[:, 0] == 0)
        expected = np.clip(np.floor((ref[i, 0] + 1.0) / 2.0 * 255.0 + 0.5), 0, 255)
        np.testing.assert_array_equal(raw[:, 1:], expected)


def test_a_tuned_sampler_gives_its_solver_and_times(tmp_path: Path) -> None:
    """A tuned sampler's JSON (solver, NFE, times) samples as that solver on those times; a solver given beside it,
    or another NFE, is refused."""
    from fewstep.bench.generation.models import resolve_model
    from fewstep.tune.tuned import TunedSampler, model_fingerprint, schedule_description

    user = resolve_model("default")
    times = [float(v) for v in fewstep.spacing.model_times(user.schedule, 6, "logsnr")]
    tuned = TunedSampler(
        times=times,
        solver="dpmpp_2m",
        nfe=6,
        method="by hand",
        schedule=schedule_description(user.schedule),
        fingerprint=model_fingerprint(user.model, user.schedule, user.shape),
    )
    tuned.save(tmp_path / "tuned.json")
    opts = {"model": "default", "dtype": "float64", "progress": False}
    fewstep.generate(5, tmp_path / "tuned", tuned=tmp_path / "tuned.json", **opts)  # type: ignore[arg-type]
    fewstep.generate(5, tmp_path / "plain", solver="dpmpp_2m", spacing="logsnr", nfe=6, **opts)  # type: ignore[arg-type]
    np.testing.assert_array_equal(_samples(tmp_path / "tuned")[1], _samples(tmp_path / "plain")[1])
    with pytest.raises(ValueError, match="tuned: a tuned sampler gives the solver"):
        fewstep.generate(5, tmp_path / "x", tuned=tmp_path / "tuned.json", solver="ddim", **opts)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nfe: the tuned sampler .* spends 6 evaluations, not 8"):
        fewstep.generate(5, tmp_path / "x", tuned=tmp_path / "tuned.json", nfe=8, **opts)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------- bad input


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["generate", *args])
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--solver", "dpmpp_2n"], "Invalid value for '--solver': unknown name 'dpmpp_2n'"),
        (["--model", "no_such_module:make"], "Invalid value for '--model': cannot import no_such_module:make"),
        (["--model", "gen_factories:broken"], "the factory gen_factories:broken raised RuntimeError: no weights here"),
        (["--n", "0"], "Invalid value for '-n' / '--n' / '--samples': 0 is not in the range x>=1"),
        (["--batch", "0"], "Invalid value for '--batch': 0 is not in the range x>=1"),
        (["--solver", "pc_langevin"], "generate gives each sample its own noise, but pc_langevin with norm='batch'"),
        (["--solver", "heun", "--nfe", "4"], "Invalid value for '--nfe': 'heun' spends 2 evaluations per step"),
        (["--format", "png", "--model", "nd64"], "'png' needs samples of shape (H, W), (1, H, W) or (3, H, W)"),
    ],
)
def test_bad_input_fails_before_generating(factories: Path, args: list[str], message: str) -> None:
    out = factories / "out"
    base = ["--n", "4", "--out", str(out), "--model", "default", "--nfe", "4", "--quiet"]
    code, text = _cli(*base, *args)
    assert code == 2 and message in text, text
    assert not out.exists()


# ---------------------------------------------------------------------------------------- torchrun (slow)


def _torchrun(cwd: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "fewstep", "generate", "--out", str(out), "--quiet", *args]
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), str(cwd)]), **(env or {})}
    return subprocess.run(command, cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_2m_sde"])
def test_two_processes_equal_one_index_by_index(tmp_path: Path, solver: str) -> None:
    """torchrun with two processes (gloo) writes the samples of one process exactly at the same batch size."""
    args = ["-n", "22", "--model", "default", "--solver", solver, "--nfe", "6", "--batch", "4", "--dtype", "float32"]
    done = _torchrun(tmp_path, tmp_path / "two", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = (tmp_path / "two" / "manifest.json").read_text()
    assert '"world_size": 2' in manifest and '"complete": true' in manifest
    opts = {"model": "default", "solver": solver, "nfe": 6, "dtype": "float32", "progress": False}
    fewstep.generate(22, tmp_path / "one", batch=4, **opts)  # type: ignore[arg-type]
    fewstep.generate(22, tmp_path / "other", batch=7, **opts)  # type: ignore[arg-type]
    i2, two = _samples(tmp_path / "two")
    i1, one = _samples(tmp_path / "one")
    assert i2.tolist() == i1.tolist() == list(range(22))
    np.testing.assert_array_equal(two, one)
    np.testing.assert_allclose(_samples(tmp_path / "other")[1], one, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_rank_killed_mid_run_is_completed_by_a_rerun(tmp_path: Path) -> None:
    (tmp_path / "gen_factories.py").write_text(textwrap.dedent(FACTORIES))
    args = ["--samples", "24", "--model", "gen_factories:killed_rank_one", "--solver", "euler_ancestral", "--nfe", "3"]
    args += ["--batch", "2", "--shard-size", "4"]
    killed = _torchrun(tmp_path, tmp_path / "run", *args, env={"KILL_RANK_ONE": "1"})
    assert killed.returncode != 0
    assert str(-signal.SIGKILL) in killed.stderr or "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    partial = len(list((tmp_path / "run" / "shards").glob("shard-*.json")))
    # a shard is 2 batches of 3 calls: rank 1 wrote its first shard, died in its second and never wrote its third;
    # rank 0 may or may not have finished its shards before the launcher stopped it
    assert 1 <= partial <= 4
    rerun = _torchrun(tmp_path, tmp_path / "run", *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    sys.path.insert(0, str(tmp_path))
    try:
        opts = {"solver": "euler_ancestral", "nfe": 3, "batch": 2, "shard_size": 4, "progress": False}
        fewstep.generate(24, tmp_path / "whole", model="gen_factories:killed_rank_one", **opts)  # type: ignore[arg-type]
    finally:
        sys.path.remove(str(tmp_path))
    indices, samples = _samples(tmp_path / "run")
    assert indices.tolist() == list(range(24))
    np.testing.assert_array_equal(samples, _samples(tmp_path / "whole")[1])
    shutil.rmtree(tmp_path / "whole")
