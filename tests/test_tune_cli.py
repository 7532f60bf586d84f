"""``fewstep tune``: it writes a tuned sampler that loads and runs, prints the held-out comparison, and rejects bad
options with the option's name."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner

import fewstep
from fewstep.bench import tune_cli
from fewstep.bench.cli import main
from fewstep.bench.targets import mixture_2d
from fewstep.tune import api


def test_the_command_offers_the_methods_of_tune() -> None:
    assert tune_cli.METHODS == api.METHODS


def test_tune_writes_a_sampler_that_runs_and_prints_the_comparison(tmp_path: Path) -> None:
    out = tmp_path / "tuned.json"
    args = ["tune", "--nfe", "4", "--budget", "700", "--calibration", "16", "--holdout", "16", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for row in ("tuned (", "best fixed (", "default ("):
        assert row in result.output
    assert "teacher:" in result.output  # the progress lines (standard error, mixed in by the runner)
    schedule = fewstep.VP()
    model = mixture_2d("default").model(schedule, "epsilon")
    tuned = fewstep.TunedSampler.load(out)
    assert tuned.nfe == 4 and tuned.calls <= 700
    calls = fewstep.CallCount()
    x = fewstep.sample(model, torch.randn(8, 2, dtype=torch.float64), schedule, solver=tuned, calls=calls)
    assert calls.network == 4 and torch.isfinite(x).all()


def test_coefficients_flag_fits_and_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "fit.json"
    args = ["tune", "--nfe", "5", "--method", "dmn", "--coefficients", "--budget", "800", "--calibration", "64"]
    result = CliRunner().invoke(main, [*args, "--holdout", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "coefficients: fitted" in result.output
    tuned = fewstep.TunedSampler.load(out)
    assert "coefficients_holdout" in tuned.errors and tuned.calls <= 800


def test_refine_coefficients_flag_refines_them(tmp_path: Path) -> None:
    out = tmp_path / "refined.json"
    args = ["tune", "--nfe", "5", "--method", "dmn", "--refine-coefficients", "--budget", "800", "--calibration", "64"]
    result = CliRunner().invoke(main, [*args, "--holdout", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "coefficients: fitted" in result.output and "coefficients refined: " in result.output
    tuned = fewstep.TunedSampler.load(out)
    assert "coefficients_holdout" in tuned.errors and tuned.calls <= 800


def test_pool_draws_a_stratified_calibration_batch(tmp_path: Path) -> None:
    out = tmp_path / "pool.json"
    args = ["tune", "--nfe", "5", "--method", "dmn", "--pool", "256", "--budget", "800", "--calibration", "64"]
    result = CliRunner().invoke(main, [*args, "--holdout", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tuned = fewstep.TunedSampler.load(out)
    assert tuned.start["pool"] == 256 and f"a pool of 256 ({tuned.start['pool_hard']} hard samples)" in result.output
    result = CliRunner().invoke(main, ["tune", "--nfe", "5", "--pool", "32", "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 2 and "--calibration" in result.output and "pool of 32" in result.output


def test_bad_options_name_the_option(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["tune", "--nfe", "5", "--solver", "dpmpp_9m", "--out", str(tmp_path / "a.json")])
    assert result.exit_code == 2 and "--solver" in result.output and "dpmpp_9m" in result.output
    result = runner.invoke(main, ["tune", "--nfe", "5", "--model", "nowhere", "--out", str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "--model" in result.output
    result = runner.invoke(main, ["tune", "--nfe", "5", "--budget", "10", "--out", str(tmp_path / "c.json")])
    assert result.exit_code == 2 and "--budget" in result.output
    assert not any(tmp_path.iterdir())


def test_compare_shows_a_tuned_sampler_beside_the_fixed_ones(tmp_path: Path) -> None:
    """The tuned row is run from compare's own noise (not the tuning's) against the exact answer, at its NFE."""
    import json

    schedule = fewstep.VP()
    model = mixture_2d("default").model(schedule, "epsilon")
    tuned = fewstep.tune(model, schedule, nfe=5, calibration=32, holdout=32, shape=(2,), budget=900, seed=0)
    path = tmp_path / "mine.json"
    tuned.save(path)
    out = tmp_path / "out"
    args = ["compare", "--target", "default", "--schedule", "vp", "--solver", "dpmpp_2m", "--nfe", "10"]
    args += ["--samples", "64", "--no-peers", "--no-plot", "--no-report", "--out", str(out), "--tuned", str(path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "tuned:mine" in result.output
    rows = {(r["solver"], r["nfe_asked"]): r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert rows["tuned:mine", 5]["nfe"] == 5
    assert rows["tuned:mine", 5]["rmse"] < rows["dpmpp_2m", 5]["rmse"]  # NFE 5 joined the asked NFEs
    bad = CliRunner().invoke(main, ["compare", "--tuned", str(tmp_path / "none.json"), "--out", str(out)])
    assert bad.exit_code == 2 and "--tuned" in bad.output


def test_start_grows_a_saved_sampler_and_refuses_another_models(tmp_path: Path) -> None:
    small, grown = tmp_path / "small.json", tmp_path / "grown.json"
    common = ["--budget", "700", "--calibration", "16", "--holdout", "16"]
    assert CliRunner().invoke(main, ["tune", "--nfe", "4", *common, "--out", str(small)]).exit_code == 0
    result = CliRunner().invoke(main, ["tune", "--nfe", "6", *common, "--start", str(small), "--out", str(grown)])
    assert result.exit_code == 0, result.output
    assert "start (per_step, grown: step" in result.output
    tuned = fewstep.TunedSampler.load(grown)
    assert tuned.nfe == 6 and tuned.start["grown_from_nfe"] == 4
    other = ["tune", "--nfe", "6", "--model", "ring", *common, "--start", str(small), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(main, other)
    assert result.exit_code == 2 and "--start" in result.output and "fingerprint" in result.output
    result = CliRunner().invoke(
        main, ["tune", "--nfe", "3", *common, "--start", str(small), "--out", str(tmp_path / "y")]
    )
    assert result.exit_code == 2 and "--start" in result.output and "fewer evaluations than nfe=3" in result.output
