"""The ``kdiffusion`` marker (tests/conftest.py): which tests it marks, that they are skipped with the reason
where k-diffusion is not installed, and that ``-m kdiffusion`` runs exactly them where it is.

Each case runs pytest in a fresh directory holding this suite's conftest.py and small test modules; k-diffusion
is simulated: a stand-in package for "installed", an import blocked in ``sys.modules`` for "not installed"."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SKIP_REASON, imports_k_diffusion

CONFTEST = Path(__file__).with_name("conftest.py")

MODULES = {
    "test_marked.py": (
        "import pytest\n\n"
        "@pytest.mark.kdiffusion\n"
        "def test_explicit():\n"
        "    pass\n\n"
        "def test_body_import():\n"
        "    from k_diffusion import sampling\n"
        "    assert sampling.OK\n\n"
        "def test_body_importorskip():\n"
        "    assert pytest.importorskip('k_diffusion.sampling').OK\n\n"
        "def test_plain():\n"
        "    pass\n"
    ),
    "test_module_level.py": (
        "import pytest\n\nK = pytest.importorskip('k_diffusion')\n\ndef test_in_module():\n    assert K.sampling.OK\n"
    ),
    "test_unrelated.py": (
        "from fewstep_stand_in import kdiffusion  # a module named like it is not k-diffusion\n\n"
        "def test_other():\n"
        "    assert kdiffusion\n"
    ),
}

MARKED = ["test_explicit", "test_body_import", "test_body_importorskip", "test_in_module"]
UNMARKED = ["test_plain", "test_other"]


def _session(tmp_path: Path, installed: bool, *args: str) -> subprocess.CompletedProcess[str]:
    conftest = CONFTEST.read_text(encoding="utf-8")
    if not installed:  # an import of k_diffusion fails, and find_spec says it is absent
        conftest += "\nimport sys\n\nsys.modules['k_diffusion'] = None\n"
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    kdiffusion: k-diffusion oracle\n")
    for name, text in MODULES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "fewstep_stand_in").mkdir()
    (tmp_path / "fewstep_stand_in" / "__init__.py").write_text("")
    (tmp_path / "fewstep_stand_in" / "kdiffusion.py").write_text("")
    if installed:
        (tmp_path / "k_diffusion").mkdir()
        (tmp_path / "k_diffusion" / "__init__.py").write_text("from . import sampling\n")
        (tmp_path / "k_diffusion" / "sampling.py").write_text("OK = True\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-v", "-rs", *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


def _outcomes(output: str) -> dict[str, str]:
    """test name -> PASSED / SKIPPED / FAILED from ``pytest -v`` output."""
    return {m.group(1): m.group(2) for m in re.finditer(r"::(\w+) (PASSED|SKIPPED|FAILED|ERROR)", output)}


def test_without_k_diffusion_the_marked_tests_are_skipped_with_the_reason(tmp_path: Path) -> None:
    done = _session(tmp_path, installed=False)
    assert done.returncode == 0, done.stdout + done.stderr
    outcomes = _outcomes(done.stdout)
    assert outcomes == {
        "test_explicit": "SKIPPED",
        "test_body_import": "SKIPPED",
        "test_body_importorskip": "SKIPPED",
        "test_plain": "PASSED",
        "test_other": "PASSED",
    }, done.stdout
    # -rs: the skipped tests with their reasons, counted by reason ("SKIPPED [2] test_marked.py: <reason>")
    counts = re.findall(r"^SKIPPED \[(\d+)\] test_marked\.py[:\d]*: (.*)$", done.stdout, re.MULTILINE)
    assert sum(int(n) for n, reason in counts if reason == SKIP_REASON) == 3, done.stdout
    text = " ".join(done.stdout.split())
    # the module that imports it at module level is skipped whole, with pytest's reason
    assert "test_module_level.py:3: could not import 'k_diffusion'" in text, done.stdout


def test_with_k_diffusion_dash_m_runs_exactly_the_marked_tests(tmp_path: Path) -> None:
    done = _session(tmp_path, True, "-m", "kdiffusion")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _outcomes(done.stdout) == dict.fromkeys(MARKED, "PASSED"), done.stdout
    assert "2 deselected" in done.stdout


def test_with_k_diffusion_everything_runs(tmp_path: Path) -> None:
    done = _session(tmp_path, True, "-m", "not kdiffusion")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _outcomes(done.stdout) == dict.fromkeys(UNMARKED, "PASSED"), done.stdout


@pytest.mark.parametrize(
    ("source", "imports"),
    [
        ("import k_diffusion", True),
        ("import k_diffusion.sampling as ks", True),
        ("from k_diffusion import sampling", True),
        ("from k_diffusion.external import DiscreteEpsDDPMDenoiser", True),
        ("pytest.importorskip('k_diffusion')", True),
        ("K = pytest.importorskip('k_diffusion.sampling').sample_euler", True),
        ("importorskip('k_diffusion')", True),
        ("from fewstep.integrations import kdiffusion", False),
        ("import k_diffusion_extras", False),
        ("pytest.importorskip('diffusers')", False),
        ("from . import k_diffusion", False),
        ("name = 'k_diffusion'", False),
    ],
)
def test_what_counts_as_importing_k_diffusion(source: str, imports: bool) -> None:
    assert imports_k_diffusion([ast.parse(source)]) is imports


# ---------------------------------------------------------------------------------------------------- the install

ROOT = Path(__file__).resolve().parents[1]


def test_the_test_install_leaves_k_diffusion_out_and_ci_adds_it() -> None:
    """The README's command 2 keeps command 1's CPU torch and the test extra holds no k-diffusion; ``.ci/run`` runs
    command 2 as written, then installs the k-diffusion oracle and runs the marked tests."""
    tomllib = pytest.importorskip("tomllib")
    block = (ROOT / "README.md").read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    install, test = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert install.startswith("pip install torch==2.13.0 ")
    assert test == 'pip install torch==2.13.0 -e ".[test]" && pytest -n 2'
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert not [r for r in extras["test"] if r.startswith(("k-diffusion", "torchvision", "setuptools"))]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert f"({test})" in ci
    oracle = next(
        i for i, line in enumerate(ci) if line.startswith("pip install torch==2.14.1 torchvision==0.29.1 k-diff")
    )
    assert ci.index(f"({test})") < oracle < ci.index("pytest -n 2 -m kdiffusion")
