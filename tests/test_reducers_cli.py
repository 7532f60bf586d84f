"""The command line's parts of the reducers' issue: the mean-reverting schedule in ``fewstep compare --schedule``, and
the wall-clock of ``fewstep compare --model`` split into model and solver time."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import fewstep
from fewstep.bench import compare as cmp
from fewstep.bench.cli import main
from fewstep.bench.targets import mixture_2d, reference_solution_from_time
from fewstep.schedules import MeanReverting


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, ["compare", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_mean_reverting_is_a_compare_schedule(tmp_path: Path) -> None:
    schedule = cmp.make_schedule("mean_reverting")
    assert isinstance(schedule, MeanReverting)
    out = tmp_path / "out"
    invoke("--schedule", "mean_reverting", "--nfe", "5,10", "--solver", "dpmpp_2m", "--samples", "16",
           "--no-peers", "--no-plot", "--no-report", "--out", str(out))  # fmt: skip
    data = json.loads((out / "compare.json").read_text())
    assert data["settings"]["schedule"] == "mean_reverting"
    rmse = {r["nfe_asked"]: r["rmse"] for r in data["rows"] if r["solver"] == "dpmpp_2m"}
    assert 0 < rmse[10] < rmse[5]
    # the table's error is the RMSE against the exact PF-ODE solution under this schedule, recomputed here
    target = mixture_2d()
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = fewstep.sample(target.model(schedule, "epsilon"), noise, schedule, "dpmpp_2m", nfe=10, progress=False)
    exact = reference_solution_from_time(target, noise, schedule, schedule.t_max)
    assert 0.2 * rmse[10] < float((x - exact).pow(2).mean().sqrt()) < 5 * rmse[10]


def test_an_unknown_schedule_lists_mean_reverting() -> None:
    result = CliRunner().invoke(main, ["compare", "--schedule", "mrs"])
    assert result.exit_code == 2 and "mean_reverting" in result.output


@pytest.mark.filterwarnings("ignore::fewstep.DivergenceWarning")
def test_user_model_rows_split_model_and_solver_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that sleeps 10 ms per call: its rows' model time is at least the calls' sleep, and the solver time is
    the rest of the run's seconds."""
    (tmp_path / "slow_model.py").write_text(
        "import time\n\nimport fewstep\nfrom fewstep.bench.targets import mixture_2d\n\n\n"
        "def make():\n"
        "    schedule = fewstep.VP()\n"
        "    inner = mixture_2d().model(schedule, 'epsilon')\n\n"
        "    def model(x, t):\n"
        "        time.sleep(0.01)\n"
        "        return inner(x, t)\n\n"
        "    return model, schedule, 'epsilon', (2,)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    text = invoke("--model", "slow_model:make", "--nfe", "4,6", "--samples", "4", "--teacher-steps", "10",
                  "--solver", "dpmpp_2m", "--no-plot", "--no-report", "--out", str(tmp_path / "out"))  # fmt: skip
    assert "inside the model-call stack" in text and "outside the model-call stack" in text
    rows = json.loads((tmp_path / "out" / "compare.json").read_text())["rows"]
    assert len(rows) == 2
    for r in rows:
        assert r["model_seconds"] is not None and r["solver_seconds"] is not None, r
        assert r["model_seconds"] >= 0.01 * r["nfe"]
        assert r["solver_seconds"] >= 0 and math.isclose(r["model_seconds"] + r["solver_seconds"], r["seconds"])
        assert r["model_seconds"] > r["solver_seconds"]
