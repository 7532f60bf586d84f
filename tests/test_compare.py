"""``fewstep compare``: the CLI runs, writes its files, is deterministic, and rejects bad options."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from fewstep.bench.cli import main
from fewstep.bench.compare import all_solvers

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


# Injected into a copy of the report: once the page has loaded, draw every <img> onto a canvas and record, as an
# attribute of <body> in the dumped DOM, its natural size, its smallest alpha and its mean RGB value (0-255), and
# any script error. A truncated or undecodable image has no size or transparent (missing) rows.
_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", (e) => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  const stats = Array.from(document.images).map((img) => {
    if (!img.complete || img.naturalWidth === 0) return "undecoded";
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let sum = 0, minAlpha = 255;
    for (let k = 0; k < px.length; k += 4) {
      sum += px[k] + px[k + 1] + px[k + 2];
      minAlpha = Math.min(minAlpha, px[k + 3]);
    }
    return canvas.width + "x" + canvas.height + ":" + minAlpha + ":" + (sum / (0.75 * px.length)).toFixed(3);
  });
  document.body.setAttribute("data-images", stats.join(","));
  const summary = document.getElementById("summary");
  const first = document.images[0];
  document.body.setAttribute("data-layout", [
    summary ? summary.getBoundingClientRect().top : -1,
    first ? first.getBoundingClientRect().top : -1,
    window.innerHeight,
  ].join(","));
  document.body.setAttribute("data-errors", window.__errors.join("|"));
});
</script>
"""


def _png_stats(src: str) -> tuple[str, int, float]:
    """``(WxH, smallest alpha, mean RGB)`` of a base64 PNG data URI, decoded by matplotlib (values 0-255)."""
    import matplotlib.image

    data = base64.b64decode(src.split(",", 1)[1])
    rgba = matplotlib.image.imread(io.BytesIO(data), format="png")
    alpha = round(255 * float(rgba[..., 3].min())) if rgba.shape[-1] == 4 else 255
    return f"{rgba.shape[1]}x{rgba.shape[0]}", alpha, float((rgba[..., :3] * 255).round().mean())


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium")
def test_report_renders_in_chromium(run_dir: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = run_dir
    report = (out / "report.html").read_text()
    assert report.count("</body>") == 1 and "<script" not in report  # the report itself runs no script
    page = tmp_path / "report.html"
    page.write_text(report.replace("</body>", _PROBE + "</body>"))
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
        "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    dom = done.stdout
    assert "dpmpp_2m" in dom and "euler_ancestral" in dom and "data:image/png;base64," in dom
    found = re.search(r'data-images="([^"]*)"', dom)
    assert found is not None, dom[-500:]
    rendered = found.group(1).split(",")
    parser = _Collect()
    parser.feed(report)
    assert len(rendered) == len(parser.imgs) == 2
    for shown, src in zip(rendered, parser.imgs, strict=True):
        size, alpha, mean = _png_stats(src)
        got_size, got_alpha, got_mean = shown.split(":")  # "undecoded" fails here
        assert (got_size, int(got_alpha)) == (size, alpha) and alpha == 255, (shown, size, alpha)
        assert abs(float(got_mean) - mean) < 0.01, (shown, mean)  # Chromium decodes the same pixels
    assert 'data-errors=""' in dom
    # the answer comes first: the summary is on the first screen, above the first plot, a best solver per NFE
    layout = re.search(r'data-layout="([^"]*)"', dom)
    assert layout is not None
    summary_top, image_top, screen = (float(v) for v in layout.group(1).split(","))
    assert 0 <= summary_top < image_top and summary_top < screen, layout.group(1)
    summary = report[report.index("id='summary'") : report.index("</table>", report.index("id='summary'"))]
    for nfe in (4, 6):
        assert re.search(rf"<td>{nfe}</td><td><b>(dpmpp_2m|heun)</b>", summary), summary
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console  # nothing written to the console (errors, warnings or logs)


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


def test_report_leads_with_the_answer_and_marks_what_it_shows(run_dir: tuple[Path, str]) -> None:
    out, _ = run_dir
    report = (out / "report.html").read_text()
    summary, first_image = report.index("id='summary'"), report.index("<img")
    assert summary < first_image < report.index("<h2>RMSE") < report.index("<h2>Settings")
    assert "[" not in report[report.index("<h2>Settings") :]  # settings as a table, not a Python repr
    assert "peer libraries" not in report  # no peers ran: no note about them
    # heun spends an odd number of evaluations (its last step is Euler): asked 4 and 6, it spent 3 and 5
    heun = report[report.index("<th>heun</th>") : report.index("</tr>", report.index("<th>heun</th>"))]
    assert "(3)</td>" in heun and "(5)</td>" in heun
    dpmpp = report[report.index("<th>dpmpp_2m</th>") : report.index("</tr>", report.index("<th>dpmpp_2m</th>"))]
    assert "(" not in dpmpp.replace("<th>", "")  # it spent what it was asked
    rows = [r for r in csv.DictReader(io.StringIO((out / "compare.csv").read_text()))]
    assert {r["solver"] for r in rows} == {"dpmpp_2m", "heun", "euler_ancestral"}


def test_report_marks_evaluations_spent_and_ties(tmp_path: Path) -> None:
    from fewstep.bench.compare import Row
    from fewstep.bench.report import render_report

    rows = [
        Row("heun", 5, 4, 0.2, coverage=1.0),
        Row("dpmpp_2m", 5, 5, 0.1, coverage=1.0),
        Row("ddim", 5, 5, 0.3, coverage=1.0),
        Row("euler", 5, 5, 0.4, coverage=1.0),
    ]
    page = render_report(rows, [5], {"target": "default", "peers": []}, [])
    assert "2.00e-01 (4)" in page  # heun spent 4 of the 5 asked
    coverage = page[page.index("<h2>fraction of mixture modes covered") :]
    assert "<b>" not in coverage[: coverage.index("</table>")]  # four rows tie at 1.0: no bold
    assert "<td>5</td><td><b>dpmpp_2m</b> 1.00e-01</td>" in page
    assert "<td>peers</td>" not in page and "none" in page


def test_summary_names_the_best_peer_once() -> None:
    from fewstep.bench.compare import Row
    from fewstep.bench.report import render_report

    rows = [Row("ipndm", 5, 5, 0.1), Row("k-diffusion:sample_euler[karras]", 5, 5, 0.3, library="k-diffusion")]
    page = render_report(rows, [5], {"target": "default"}, [])
    summary = page[page.index("id='summary'") : page.index("</table>")]
    assert "<td>k-diffusion:sample_euler[karras] 3.00e-01</td><td>0.33</td><td>ipndm</td>" in summary
    assert "k-diffusion k-diffusion" not in page
