"""``fewstep compare``: the CLI runs, writes its files, is deterministic, and rejects bad options."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from fewstep.cli import main
from fewstep.compare import all_solvers

SMALL = ["--samples", "24", "--nfe", "4,6"]
SOLVERS = ["--solver", "dpmpp_2m", "--solver", "heun", "--solver", "euler_ancestral", "--no-peers"]
CHROMIUM = Path("/usr/bin/chromium")


def _run(out: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["compare", *SMALL, *SOLVERS, "--out", str(out), *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cmp")
    return out, _run(out, "--seed", "3")


def test_writes_all_files(run_dir: tuple[Path, str]) -> None:
    out, text = run_dir
    for name in ("compare.csv", "compare.json", "compare.png", "samples.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert "RMSE against the exact solution" in text and "sliced W2" in text
    rmse_table = text.split("sliced W2")[0]
    assert "dpmpp_2m" in rmse_table and "euler_ancestral" not in rmse_table.split("\n\n")[0]


def test_csv_and_json_agree(run_dir: tuple[Path, str]) -> None:
    out, _ = run_dir
    with (out / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    data = json.loads((out / "compare.json").read_text())
    assert data["settings"]["seed"] == 3 and data["settings"]["samples"] == 24 and data["settings"]["nfe"] == [4, 6]
    assert len(rows) == len(data["rows"]) == 3 * 2
    for c, j in zip(rows, data["rows"], strict=True):
        assert c["solver"] == j["solver"] and int(c["nfe_asked"]) == j["nfe_asked"]
        for k in ("rmse", "sw2", "mmd", "coverage"):
            if j[k] is None:
                assert c[k] == ""
            else:
                assert math.isclose(float(c[k]), j[k], rel_tol=1e-6)
    by = {(r["solver"], r["nfe_asked"]): r for r in data["rows"]}
    assert by[("euler_ancestral", 4)]["rmse"] is None and by[("euler_ancestral", 4)]["sw2"] > 0
    assert by[("dpmpp_2m", 6)]["rmse"] > 0 and 0 <= by[("dpmpp_2m", 6)]["coverage"] <= 1
    assert by[("heun", 4)]["nfe"] == 3  # Heun spends 2 per step, one less on the last: the largest <= 4


def test_deterministic_given_seed(run_dir: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = run_dir
    _run(tmp_path / "a", "--seed", "3")
    for name in ("compare.csv", "compare.json"):
        assert (tmp_path / "a" / name).read_bytes() == (out / name).read_bytes(), name
    _run(tmp_path / "b", "--seed", "4", "--no-plot", "--no-report")
    assert (tmp_path / "b" / "compare.csv").read_bytes() != (out / "compare.csv").read_bytes()


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.text: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.imgs.append(dict(attrs).get("src") or "")
        self.tables += tag == "table"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_parses_embeds_plots_and_lists_solvers(run_dir: tuple[Path, str]) -> None:
    out, _ = run_dir
    page = (out / "report.html").read_text()
    parser = _Collect()
    parser.feed(page)
    parser.close()
    assert len(parser.imgs) == 2 and all(s.startswith("data:image/png;base64,") for s in parser.imgs)
    assert parser.tables >= 2
    text = " ".join(parser.text)
    for solver in ("dpmpp_2m", "heun", "euler_ancestral"):
        assert solver in text
    assert "http://" not in page and "https://" not in page  # self-contained


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium")
def test_report_renders_in_chromium(run_dir: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = run_dir
    page = tmp_path / "report.html"
    shutil.copy(out / "report.html", page)
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "dpmpp_2m" in dom and "euler_ancestral" in dom and "data:image/png;base64," in dom


def test_digits_writes_image_grid(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "compare",
            "--target",
            "digits",
            "--samples",
            "16",
            "--nfe",
            "3",
            "--solver",
            "ddim",
            "--no-peers",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert "dim=64" in result.output
    assert "FD-digits" in result.output and "not Inception FID" in result.output
    (row,) = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert row["fd_digits"] > 0 and math.isfinite(row["fd_digits"])
    assert "FD-digits" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--target", "moon"], "--target"),
        (["--schedule", "nope"], "--schedule"),
        (["--nfe", "5,x"], "--nfe"),
        (["--nfe", "0"], "--nfe"),
        (["--samples", "1"], "--samples"),
        (["--solver", "nope"], "--solver"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], option: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["compare", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert option in result.output


def test_all_solvers_listed_by_default() -> None:
    names = all_solvers()
    assert "dpmpp_2m" in names and "euler_ancestral" in names and len(names) == len(set(names))
