"""The ``fewstep`` command without the ``bench`` extra: it says what to install and exits with status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fewstep
import fewstep.cli

SRC = Path(fewstep.__file__).resolve().parents[1]  # the directory holding the fewstep package under test


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` in a fresh interpreter that imports the fewstep under test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


HINT = 'pip install "fewstep[bench]"'


@pytest.mark.parametrize(
    ("blocked", "named"), [("click", "click"), ("matplotlib", "matplotlib"), ("sklearn", "scikit-learn")]
)
def test_cli_without_the_bench_extra(blocked: str, named: str) -> None:
    """A missing package of the ``bench`` extra (simulated: ``sys.modules[name] = None`` blocks its import):
    ``fewstep`` prints one line naming it and the fix, and exits with status 2."""
    done = _python(f"import sys\nsys.modules[{blocked!r}] = None\nimport fewstep.cli\nfewstep.cli.main()")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0] and HINT in lines[0]


def test_python_m_fewstep_without_the_bench_extra() -> None:
    """``python -m fewstep`` goes through the same launcher."""
    done = _python("import runpy, sys\nsys.modules['click'] = None\nrunpy.run_module('fewstep', run_name='__main__')")
    assert done.returncode == 2, done.stderr
    assert "click" in done.stderr and HINT in done.stderr and "Traceback" not in done.stderr


def test_python_m_fewstep_with_the_bench_extra() -> None:
    """With the extra installed, ``python -m fewstep`` runs the click command line."""
    code = "import runpy, sys\nsys.argv = ['fewstep', '--version']\nrunpy.run_module('fewstep', run_name='__main__')"
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert fewstep.__version__ in done.stdout


def test_cli_import_error_of_a_bench_package(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A bench package that is found but fails to import (here: blocked after the check) gets the same message."""
    monkeypatch.setattr(fewstep.cli, "missing_bench_packages", lambda: [])
    monkeypatch.setitem(sys.modules, "click", None)
    monkeypatch.delitem(sys.modules, "fewstep.bench.cli", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        fewstep.cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "click" in err and HINT in err


def test_cli_other_import_errors_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    """An import error that is not a missing bench package is a bug: it is raised, not turned into the hint."""
    monkeypatch.setitem(sys.modules, "fewstep.bench.cli", None)
    with pytest.raises(ImportError):
        fewstep.cli.main()
