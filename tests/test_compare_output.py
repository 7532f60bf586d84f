"""``fewstep compare`` output: written atomically, marked by a manifest, stale outputs removed, ``--resume``."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import fewstep
from fewstep.bench import compare as cmp
from fewstep.bench.cli import main

TINY = ["--samples", "16", "--nfe", "4,6", "--no-peers"]
TWO = ["--solver", "dpmpp_2m", "--solver", "euler_ancestral"]
FOUR = ["--solver", "ddim", "--solver", "dpmpp_2m", "--solver", "heun", "--solver", "euler_ancestral"]
OUTPUTS = {"compare.csv", "compare.json", "compare.png", "samples.png", "report.html"}


def _invoke(out: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["compare", *TINY, "--out", str(out), *args])


def _run(out: Path, *args: str) -> Result:
    result = _invoke(out, *args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


def test_interrupt_while_writing_keeps_previous_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    _run(out, *TWO)
    before = _snapshot(out)
    assert set(before) == OUTPUTS | {"manifest.json"}

    from matplotlib.figure import Figure

    def broken_savefig(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        data = b"\x89PNG\r\n\x1a\n" + b"\0" * 46  # a 54-byte truncated PNG, then the interrupt
        if hasattr(fname, "write"):
            fname.write(data)
        else:
            Path(fname).write_bytes(data)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    result = _invoke(out, *TWO, "--seed", "5")  # other rows: every file would change
    assert result.exit_code != 0  # click turns the interrupt into "Aborted!"
    assert _snapshot(out) == before  # no partial file, nothing of the interrupted run, manifest intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind


def test_manifest_lists_every_file_with_hashes(tmp_path: Path) -> None:
    _run(tmp_path, *TWO, "--seed", "2")
    man = _manifest(tmp_path)
    files = {f["name"]: f for f in man["files"]}
    assert set(files) == OUTPUTS == {p.name for p in tmp_path.iterdir()} - {"manifest.json"}
    for name, entry in files.items():
        data = (tmp_path / name).read_bytes()
        assert entry["size"] == len(data), name
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), name
    assert man["fewstep_version"] == fewstep.__version__
    assert man["settings"] == json.loads((tmp_path / "compare.json").read_text())["settings"]
    assert man["settings"]["seed"] == 2 and man["settings"]["solvers"] == ["dpmpp_2m", "euler_ancestral"]
    created = datetime.fromisoformat(man["created_utc"].replace("Z", "+00:00"))
    assert created.utcoffset() == timedelta(0)


def test_rerun_removes_stale_outputs_and_keeps_user_files(tmp_path: Path) -> None:
    _run(tmp_path, *TWO)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "extra.png").write_bytes(b"also mine")
    _run(tmp_path, *TWO, "--seed", "1", "--no-plot", "--no-report")
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"compare.csv", "compare.json", "manifest.json", "notes.txt", "extra.png"}
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "extra.png").read_bytes() == b"also mine"
    assert {f["name"] for f in _manifest(tmp_path)["files"]} == {"compare.csv", "compare.json"}
    assert json.loads((tmp_path / "compare.json").read_text())["settings"]["seed"] == 1


def test_resume_equals_fresh_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    _run(fresh, *FOUR)
    _run(resumed, *TWO)
    calls: list[str] = []
    real_sample = cmp.sample

    def counting_sample(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[3])
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(cmp, "sample", counting_sample)
    result = _run(resumed, *FOUR, "--resume")
    assert "reusing 4 of 8 rows" in result.stderr
    # the 4 new rows, and the 2 reused solvers again at the smallest NFE for the samples plot
    assert sorted(calls) == sorted(["ddim", "ddim", "heun", "heun", "dpmpp_2m", "euler_ancestral"])
    a, b = _snapshot(fresh), _snapshot(resumed)
    assert set(a) == set(b) == OUTPUTS | {"manifest.json"}
    for name in sorted(OUTPUTS):
        assert a[name] == b[name], name  # rows, CSV, JSON, plots and report as a fresh run writes them
    man_a, man_b = _manifest(fresh), _manifest(resumed)
    assert man_a["files"] == man_b["files"] and man_a["settings"] == man_b["settings"]


def test_resume_with_other_settings_runs_fresh(tmp_path: Path) -> None:
    first = _run(tmp_path / "a", *TWO, "--no-plot", "--no-report", "--resume")
    assert "nothing to resume" in first.stderr
    _run(tmp_path / "b", *TWO, "--seed", "1", "--no-plot", "--no-report")
    again = _run(tmp_path / "a", *TWO, "--seed", "1", "--no-plot", "--no-report", "--resume")
    assert "settings differ" in again.stderr and "seed" in again.stderr
    for name in ("compare.csv", "compare.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_resume_ignores_a_compare_json_that_does_not_match_its_manifest(tmp_path: Path) -> None:
    _run(tmp_path, *TWO, "--no-plot", "--no-report")
    path = tmp_path / "compare.json"
    data = json.loads(path.read_text())
    data["rows"][0]["sw2"] = 123.0
    path.write_text(json.dumps(data))
    result = _run(tmp_path, *TWO, "--no-plot", "--no-report", "--resume")
    assert "does not match manifest.json" in result.stderr
    assert json.loads(path.read_text())["rows"][0]["sw2"] != 123.0
