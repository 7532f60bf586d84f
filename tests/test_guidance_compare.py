"""``fewstep compare --guidance``: every sampler, the peers' included, runs with CFG on the same labels, null label and
scale, against the exact guided reference; the peer wrappers are CFG as the peer libraries' users apply it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import fewstep
from fewstep.bench import peers
from fewstep.bench.catalog import CONDITIONAL_TARGETS
from fewstep.bench.cli import main
from fewstep.bench.compare import GuidedRun, compare, make_schedule, make_target
from fewstep.bench.targets import labelled_mixture_2d, reference_solution_from_time

SCALE = 7.5


def _by_hand_cfg(lm, y: torch.Tensor, scale: float, schedule):  # type: ignore[no-untyped-def]
    """The guided network written out: two calls, then u + w (c - u) on the epsilon output."""
    model = lm.model(schedule, "epsilon")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        u, c = model(x, t, torch.full_like(y, -1)), model(x, t, y)
        return u + scale * (c - u)

    return guided


def test_compare_runs_every_solver_with_cfg_against_the_exact_guided_reference() -> None:
    target, schedule = make_target("labelled_2d"), make_schedule("vp")
    c = compare(target, schedule, ["ddim", "dpmpp_3m"], [5, 40], samples=16, guidance=SCALE)
    y = torch.arange(16) % 4
    assert torch.equal(GuidedRun.of(target, SCALE, 16).labels, y)  # type: ignore[union-attr]
    ref = reference_solution_from_time(target.guided(y, SCALE), c.noise, schedule, schedule.t_max)  # type: ignore[union-attr]
    torch.testing.assert_close(c.reference, ref, rtol=0, atol=0)
    by = {(r.solver, r.nfe_asked): r for r in c.rows}
    # the rows are the CFG runs: the same error as the guided network written out by hand
    x = fewstep.sample(_by_hand_cfg(target, y, SCALE, schedule), c.noise, schedule, "ddim", nfe=5)
    assert math.isclose(by["ddim", 5].rmse, float(torch.sqrt(torch.mean((x - ref) ** 2))), rel_tol=1e-9)
    assert by["dpmpp_3m", 40].rmse < by["dpmpp_3m", 5].rmse / 20  # converges to the guided reference
    assert all(math.isfinite(r.sw2) for r in c.rows)


def test_conditional_target_without_guidance_is_the_conditional_model() -> None:
    target, schedule = make_target("labelled_2d"), make_schedule("vp")
    c = compare(target, schedule, ["dpmpp_2m"], [6], samples=8, peers=False)
    ref = reference_solution_from_time(target.guided(torch.arange(8) % 4, 1.0), c.noise, schedule, schedule.t_max)  # type: ignore[union-attr]
    torch.testing.assert_close(c.reference, ref, rtol=0, atol=0)


def test_guidance_on_an_unconditional_target_is_a_clear_error() -> None:
    target, schedule = make_target("default"), make_schedule("vp")
    with pytest.raises(ValueError, match=r"guidance: needs a conditional target .* labelled_2d, labelled_64d"):
        compare(target, schedule, ["ddim"], [5], samples=8, guidance=3.0)
    result = CliRunner().invoke(main, ["compare", "--target", "default", "--guidance", "3", "--samples", "8"])
    assert result.exit_code == 2
    assert "'--guidance'" in result.output and "labelled_2d" in result.output and "--target default" in result.output
    with pytest.raises(ValueError, match="guidance: the CFG scale must be a finite number"):
        compare(make_target("labelled_2d"), schedule, ["ddim"], [5], samples=8, guidance=math.nan)


def test_the_command_line_targets_agree_with_compare() -> None:
    from fewstep.bench import compare as cmp

    assert set(CONDITIONAL_TARGETS) <= set(cmp.TARGETS)
    for name in CONDITIONAL_TARGETS[:2]:
        assert make_target(name).num_classes >= 2  # type: ignore[union-attr]


def test_cli_guidance_writes_its_settings(tmp_path: Path) -> None:
    args = ["compare", "--target", "labelled_2d", "--guidance", "3", "--samples", "8", "--nfe", "5"]
    args += ["--solver", "ddim", "--no-peers", "--no-plot", "--no-report", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "compare.json").read_text())["settings"]
    assert settings["guidance"] == 3.0
    assert settings["reference"].startswith("exact guided PF-ODE solution (CFG scale 3")
    assert "guidance=3.0" in result.output


# --- the peers with CFG --------------------------------------------------------------------------------------------


def test_kdiffusion_cfg_denoiser_equals_fewstep_cfg_on_the_same_sigmas() -> None:
    """k-diffusion's Euler through the CFG denoiser (u + w (c - u) on the denoised output) is fewstep's Euler with
    guidance_scale on the same grid: the combination on x0 and on the network's epsilon output agree."""
    pytest.importorskip("k_diffusion")
    lm, schedule = labelled_mixture_2d(), fewstep.VP()
    noise = torch.randn(12, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(12) % 4
    guidance = peers.PeerGuidance(y, torch.full_like(y, -1), SCALE)
    grid = peers.kdiffusion_grid(lm.model(schedule), schedule, noise, [6], "epsilon", [("sample_euler", 1)],
                                 ("logsnr",), guidance)  # fmt: skip
    (run,) = grid["sample_euler", "logsnr"]
    assert run.nfe == 6 and run.x is not None  # one batched call (both branches) per step
    cond = {"model_kwargs": {"y": y}, "uncond_kwargs": {"y": torch.full_like(y, -1)}, "guidance_scale": SCALE}
    ours = fewstep.sample(lm.model(schedule), noise, schedule, "euler", nfe=6, spacing="logsnr", **cond)
    torch.testing.assert_close(run.x, ours, rtol=0, atol=1e-10)


def test_diffusers_cfg_loop_equals_fewstep_cfg_on_the_same_timesteps() -> None:
    """A pipeline's CFG loop (noise_pred = u + w (c - u), then DDIMScheduler.step) is fewstep's ddim with CFG on the
    same (leading) timesteps, to diffusers' float32 tables."""
    diffusers = pytest.importorskip("diffusers")
    lm, schedule = labelled_mixture_2d(), make_schedule("sd")
    noise = float(schedule.sigma(schedule.t_max)) * torch.randn(
        12, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    y = torch.arange(12) % 4
    guidance = peers.PeerGuidance(y, torch.full_like(y, -1), SCALE)
    grid = peers.diffusers_grid(lm.model(schedule), schedule, noise, [6], "epsilon", peers.DIFFUSERS[:1],
                                ("leading",), guidance)  # fmt: skip
    (run,) = grid["DDIM", "leading"]
    assert run.nfe == 6 and run.x is not None
    s = diffusers.DDIMScheduler(**peers.beta_config(schedule), timestep_spacing="leading")  # type: ignore[arg-type]
    s.set_timesteps(6)
    times = schedule.t_of_index(s.timesteps.to(torch.float64))  # type: ignore[attr-defined]
    cond = {"model_kwargs": {"y": y}, "uncond_kwargs": {"y": torch.full_like(y, -1)}, "guidance_scale": SCALE}
    ours = fewstep.sample(lm.model(schedule), noise, schedule, "ddim", spacing=times, **cond)
    assert float((run.x - ours).norm() / ours.norm()) < 1e-4


def test_sigma_grids_only_where_the_scheduler_takes_them() -> None:
    pytest.importorskip("diffusers")
    ddim, dpm = peers.DIFFUSERS[0], peers.DIFFUSERS[1]
    assert not peers.takes_spacing(ddim, "karras") and peers.takes_spacing(dpm, "karras")
    assert peers.takes_spacing(ddim, "trailing") and peers.takes_spacing(ddim, None)


def test_compare_with_peers_and_guidance(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    pytest.importorskip("k_diffusion")
    args = ["compare", "--target", "labelled_2d", "--guidance", "7.5", "--schedule", "sd", "--samples", "8"]
    args += ["--nfe", "6", "--solver", "dpmpp_2m", "--peers", "--no-plot", "--no-report", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert {r["library"] for r in rows} == {"fewstep", "diffusers", "k-diffusion"}
    by = {r["solver"]: r for r in rows}
    assert by["k-diffusion:sample_euler"]["nfe"] == 6 and by["diffusers:DDIM"]["nfe"] == 6
    assert all(r["rmse"] is not None and r["rmse"] > 0 for r in rows if not r["nonfinite"])
