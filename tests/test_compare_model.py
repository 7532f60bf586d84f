"""``fewstep compare --model``: the solvers on the user's own network (a function, or a saved diffusers pipeline),
against a teacher solve of it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fewstep.bench.cli import main

ARGS = ["--nfe", "4,6", "--samples", "4", "--teacher-steps", "20", "--solver", "dpmpp_2m", "--solver", "heun"]


def run(out: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["compare", *ARGS, "--out", str(out), *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.filterwarnings("ignore::fewstep.DivergenceWarning")  # a random network: its samples are noise
def test_a_saved_diffusers_pipeline(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    text = run(tmp_path / "out", "--model", str(tmp_path / "pipe"))
    assert re.search(r"teacher: dpm_solver_3, 20 logSNR steps \(\d+ evaluations, [0-9.]+ s\)", text), text[-500:]
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert data["settings"]["model"] == "DDPMPipeline" and data["settings"]["shape"] == [1, 8, 8]
    rows = data["rows"]
    assert {r["solver"] for r in rows} == {"dpmpp_2m", "heun"}
    assert all(r["rmse"] is not None and r["rmse"] > 0 and r["seconds"] > 0 for r in rows)
    report = (tmp_path / "out" / "report.html").read_text()
    assert "against the teacher solve" in report and report.index("id='summary'") < report.index("<img")


def test_a_module_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_model.py").write_text(
        "import fewstep\nfrom fewstep.bench.targets import mixture_2d\n\n\n"
        "def make():\n"
        "    schedule = fewstep.EDM()\n"
        "    return mixture_2d().model(schedule, 'epsilon'), schedule, 'epsilon', (2,)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    run(tmp_path / "out", "--model", "my_model:make")
    rows = json.loads((tmp_path / "out" / "compare.json").read_text())["rows"]
    # the teacher is a tight solve of the same (exact) model: the errors shrink with the NFE
    rmse = {(r["solver"], r["nfe_asked"]): r["rmse"] for r in rows}
    assert rmse["dpmpp_2m", 6] < rmse["dpmpp_2m", 4]


def test_a_bad_model_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["compare", "--model", "no_such_module_here:make", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--model" in result.output
    result = CliRunner().invoke(main, ["compare", "--model", "just_a_name", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "module:function" in result.output
