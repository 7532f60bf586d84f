"""``fewstep compare`` with the peer libraries (diffusers, k-diffusion) side by side: same target, schedule,
start noise and NFE; the harness agrees with fewstep where the algorithm is the same; broken peers are flagged."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import fewstep
from fewstep.bench import peers
from fewstep.bench.cli import main
from fewstep.bench.compare import compare, make_schedule, make_target

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("k_diffusion")

TINY = ["--samples", "16", "--nfe", "4", "--solver", "ddim", "--solver", "dpmpp_2m", "--no-plot"]


def _cli(out: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
    result = CliRunner().invoke(main, ["compare", *TINY, "--out", str(out), *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output, json.loads((out / "compare.json").read_text())["rows"]


def test_peers_rows_for_both_libraries(tmp_path: Path) -> None:
    text, rows = _cli(tmp_path, "--schedule", "sd", "--peers")
    libs = {r["library"] for r in rows}
    assert libs == {"fewstep", "diffusers", "k-diffusion"}
    for r in rows:
        if r["library"] != "fewstep":
            assert not r["nonfinite"], r
            assert r["rmse"] is not None and math.isfinite(r["rmse"]) and r["rmse"] > 0, r
            assert r["sw2"] is not None and r["nfe"] is not None and r["nfe"] <= r["nfe_asked"]
    names = {r["solver"] for r in rows}
    assert "diffusers:DPMSolverMultistep(3)" in names and "k-diffusion:sample_dpmpp_2m" in names
    assert any(n.startswith("diffusers:DPMSolverMultistep(3)[") for n in names)  # its best spacing
    by = {r["solver"]: r for r in rows}
    assert by["k-diffusion:sample_heun"]["nfe"] == 3 and by["diffusers:HeunDiscrete"]["nfe"] == 3
    assert "diffusers:DDIM" in text and "k-diffusion:sample_euler" in text
    page = (tmp_path / "report.html").read_text()
    assert "class='peer'" in page and ">diffusers<" in page
    header = (tmp_path / "compare.csv").read_text().splitlines()[0]
    assert header.startswith("library,solver")


def test_k_diffusion_only_on_other_schedules(tmp_path: Path) -> None:
    _, rows = _cli(tmp_path, "--schedule", "vp")
    assert {r["library"] for r in rows} == {"fewstep", "k-diffusion"}  # peers on by default


def test_no_peers(tmp_path: Path) -> None:
    _, rows = _cli(tmp_path, "--schedule", "sd", "--no-peers")
    assert {r["library"] for r in rows} == {"fewstep"}


def test_diffusers_ddim_equals_fewstep_ddim_on_the_same_grid() -> None:
    """On diffusers' own (leading) DDIM timesteps fewstep's ddim and diffusers' DDIMScheduler take the same
    steps: the rows agree to 1e-4 (diffusers' tables are float32), so the harness is the same on both sides."""
    target, sched = make_target("default"), make_schedule("sd")
    assert isinstance(sched, fewstep.DiscreteVP)
    steps = 6
    s = diffusers.DDIMScheduler(**peers.beta_config(sched), clip_sample=False, set_alpha_to_one=True)  # type: ignore[arg-type]
    assert s.config.timestep_spacing == "leading"
    s.set_timesteps(steps)
    times = sched.t_of_index(s.timesteps.to(torch.float64))
    c = compare(target, sched, ["ddim"], [steps], spacing=times, samples=32, peers=True, schedule_name="sd")  # type: ignore[arg-type]
    by = {r.solver: r for r in c.rows}
    ours, theirs = by["ddim"], by["diffusers:DDIM"]
    assert ours.nfe == theirs.nfe == steps
    assert math.isclose(ours.rmse, theirs.rmse, rel_tol=1e-4), (ours.rmse, theirs.rmse)
    assert math.isclose(ours.sw2, theirs.sw2, rel_tol=1e-3)
    # and the samples themselves
    model = target.model(sched, "epsilon")
    (run,) = peers.diffusers_runs(model, sched, c.noise, c.reference, [steps], "epsilon", peers.DIFFUSERS[:1])[:1]
    assert run.x is not None
    x = fewstep.sample(model, c.noise, sched, "ddim", spacing=times)
    assert float((run.x - x).norm() / x.norm()) < 1e-4


class _NaNScheduler(diffusers.DDIMScheduler):  # type: ignore[misc,name-defined]
    """A broken scheduler: every step returns NaN."""

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *a: Any, **k: Any) -> Any:
        out = super().step(model_output, timestep, sample, *a, **k)
        out.prev_sample = torch.full_like(out.prev_sample, math.nan)
        return out


def test_broken_peers_are_flagged_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diffusers, "NaNStubScheduler", _NaNScheduler, raising=False)
    monkeypatch.setattr(peers, "DIFFUSERS", (peers.DIFFUSERS[0], peers.DiffusersPeer("NaNStub", "NaNStubScheduler")))
    monkeypatch.setattr(peers, "KDIFFUSION", (("sample_euler", 1), ("sample_does_not_exist", 1)))
    with pytest.warns(RuntimeWarning, match="sample_does_not_exist at NFE 4 failed"):
        text, rows = _cli(tmp_path, "--schedule", "ddpm")
    by = {r["solver"]: r for r in rows}
    assert by["diffusers:NaNStub"]["nonfinite"] is True and by["diffusers:NaNStub"]["rmse"] is None
    assert by["k-diffusion:sample_does_not_exist"]["nonfinite"] is True
    assert by["diffusers:DDIM"]["nonfinite"] is False and by["k-diffusion:sample_euler"]["nonfinite"] is False
    nan_line = next(line for line in text.splitlines() if line.startswith("diffusers:NaNStub "))
    assert "nan!" in nan_line
    assert "nan!" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(("cls", "solver"), [("EulerDiscreteScheduler", "euler"), ("LMSDiscreteScheduler", "lms")])
def test_scaled_input_schedulers_start_from_the_same_state(cls: str, solver: str) -> None:
    """Euler / LMS keep the state x / alpha and scale the model input (``init_noise_sigma`` != 1): started from
    x_T / alpha(t_max) as the harness does, they agree with fewstep's solver on the same times to 1e-4."""
    sched, target = make_schedule("sd"), make_target("default")
    model = target.model(sched, "epsilon")
    noise = float(sched.sigma(sched.t_max)) * torch.randn(
        32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    s = getattr(diffusers, cls)(**peers.beta_config(sched), timestep_spacing="trailing")  # type: ignore[arg-type]
    s.set_timesteps(5)
    assert float(s.init_noise_sigma) > 1
    x = peers.run_scheduler(s, model, noise, float(sched.alpha(sched.t_max)))
    y = fewstep.sample(model, noise, sched, solver, spacing=sched.t_of_index(s.timesteps.to(torch.float64)))
    assert float((x - y).norm() / y.norm()) < 1e-4


def test_resume_reuses_peer_rows_and_equals_a_fresh_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    _cli(fresh, "--schedule", "sd", "--peers", "--solver", "heun", "--no-report")
    _cli(resumed, "--schedule", "sd", "--peers", "--no-report")

    def not_again(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("peer rows of the previous run should be reused")

    monkeypatch.setattr(peers, "diffusers_runs", not_again)
    monkeypatch.setattr(peers, "kdiffusion_runs", not_again)
    _cli(resumed, "--schedule", "sd", "--peers", "--solver", "heun", "--no-report", "--resume")
    for name in ("compare.csv", "compare.json"):
        assert (fresh / name).read_bytes() == (resumed / name).read_bytes(), name
