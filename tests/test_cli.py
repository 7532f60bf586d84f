"""The command line: ``fewstep solvers``, the choices in ``--help``, errors worded for the command line, other
packages' warnings hidden, and a start that does not import torch (``--help``, ``solvers``, ``import fewstep``)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import fewstep
from fewstep.bench import catalog
from fewstep.bench.cli import cli_error, main, third_party_warnings_hidden
from fewstep.bench.compare import all_solvers

SRC = Path(fewstep.__file__).resolve().parents[1]


def _run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args))


def _words(text: str) -> str:
    """``text`` with its line breaks and runs of spaces as single spaces (click wraps the help)."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------- catalog


def test_catalog_is_the_core_registry() -> None:
    """The command line's torch-free tables equal what the core defines (after a change to a built-in solver,
    a spacing or a prediction type: ``python -m fewstep.bench.catalog``)."""
    solvers, spacings, discrete, predictions = catalog.from_core()
    hint = "the catalog is out of date: run python -m fewstep.bench.catalog"
    assert catalog.SOLVERS == solvers, hint
    assert (catalog.SPACINGS, catalog.DISCRETE_SPACINGS, catalog.PREDICTIONS) == (spacings, discrete, predictions), hint
    assert catalog.solver_names() == all_solvers()  # compare's order


def test_catalog_render_is_the_file() -> None:
    """The generated block in the file is what ``python -m fewstep.bench.catalog`` writes (no hand edits)."""
    text = Path(catalog.__file__).read_text(encoding="utf-8")
    assert catalog.render() in text


# ---------------------------------------------------------------------------------------------------- fewstep solvers


def test_solvers_lists_every_solver_with_its_columns() -> None:
    result = _run("solvers")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "order", "NFE/step", "stochastic", "paper"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == [s.name for s in catalog.SOLVERS]
    heun = rows["heun"].split(maxsplit=4)
    assert heun[:4] == ["heun", "2", "2", "no"] and heun[4] == "Karras et al. 2022 (EDM), Alg. 1"
    assert rows["dpmpp_3m"].split()[1:4] == ["3", "1", "no"]
    assert rows["seeds_3"].split()[1:4] == ["3", "3", "yes"]
    for info in fewstep.solvers.available():  # the registry's values, row by row
        cells = rows[info.name].split(maxsplit=4)
        assert cells[1:] == [str(info.order), str(info.nfe_per_step), "yes" if info.stochastic else "no", info.paper]


@pytest.mark.parametrize("flag", ["--ode", "--stochastic"])
def test_solvers_filters(flag: str) -> None:
    result = _run("solvers", flag)
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()[1:]]
    stochastic = flag == "--stochastic"
    assert names == [s.name for s in catalog.SOLVERS if s.stochastic == stochastic] and names


# ---------------------------------------------------------------------------------------------------- --help


def test_compare_help_lists_the_choices() -> None:
    result = _run("compare", "--help")
    assert result.exit_code == 0, result.output
    text = _words(result.output)
    solver_help = text[text.index("--solver NAME") : text.index("--spacing")]
    for name in catalog.solver_names():
        assert f" {name}," in solver_help or f" {name}." in solver_help, name
    assert "fewstep solvers" in solver_help
    assert "--spacing [" + "|".join(catalog.SPACINGS) + "]" in text
    assert "--prediction [" + "|".join(catalog.PREDICTIONS) + "]" in text


def test_main_help_lists_the_commands() -> None:
    result = _run("--help")
    assert result.exit_code == 0, result.output
    assert "compare" in result.output and "solvers" in result.output


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "option", "words"),
    [
        (["--solver", "dpmpp2m"], "--solver", ["unknown solver 'dpmpp2m'", "did you mean 'dpmpp_2m'", "ddim, "]),
        (["--spacing", "logsnrr"], "--spacing", ["unknown spacing 'logsnrr'", "did you mean 'logsnr'", "karras"]),
        (["--prediction", "eps"], "--prediction", ["unknown prediction type 'eps'", "velocity"]),
        (
            ["--spacing", "trailing"],
            "--spacing",
            ["'trailing'", "--schedule sd or ddpm, not --schedule vp", "uniform, logsnr"],
        ),
        (
            ["--schedule", "flow", "--prediction", "score"],
            "--prediction",
            ["'score'", "--schedule flow", "velocity, v_prediction, sample"],
        ),
    ],
)
def test_errors_name_the_option_and_the_allowed_values(
    args: list[str], option: str, words: list[str], tmp_path
) -> None:
    """A bad value is a usage error (status 2) that names the option, says what is wrong and what is allowed, in
    the command line's words: no Python-API advice ("pass a tensor", "t_max", "DiscreteVP")."""
    result = _run("compare", *args, "--nfe", "3", "--samples", "8", "--no-peers", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    text = _words(result.output)
    assert f"Invalid value for '{option}'" in text, text
    for word in words:
        assert word in text, (word, text)
    for api in ("pass a tensor", "t_max", "DiscreteVP", "Traceback"):
        assert api not in text
    assert not (tmp_path / "o").exists()  # nothing ran


def test_core_errors_are_reworded_for_the_option() -> None:
    """An error of the core that names an option ("spacing: ...") is reported against the command's option."""
    err = cli_error(ValueError("nfe: heun cannot spend 4 evaluations"))
    assert isinstance(err, click.BadParameter)
    assert _words(err.format_message()) == "Invalid value for '--nfe': heun cannot spend 4 evaluations"
    other = cli_error(ValueError("something else: went wrong"))
    assert type(other) is click.UsageError and other.format_message() == "something else: went wrong"


# ---------------------------------------------------------------------------------------------------- warnings


def test_other_packages_warnings_are_hidden_in_a_command() -> None:
    """Inside a command, a warning raised by another package (here as CLIP's module raises it on import) is not
    shown; fewstep's own are."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with third_party_warnings_hidden():
            warnings.warn_explicit("pkg_resources is deprecated as an API", UserWarning, "clip.py", 6, "clip.clip")
            warnings.warn_explicit("torch says", UserWarning, "x.py", 1, "torch.nn.modules")
            warnings.warn_explicit("peer failed", RuntimeWarning, "compare.py", 1, "fewstep.bench.compare")
            warnings.warn_explicit("diverged", UserWarning, "guard.py", 1, "fewstep")
        warnings.warn_explicit("after the command", UserWarning, "clip.py", 6, "clip.clip")
    assert [str(w.message) for w in seen] == ["peer failed", "diverged", "after the command"]


def test_python_warning_options_win() -> None:
    """``python -W error`` (or ``PYTHONWARNINGS``) is left in charge."""
    code = (
        "import warnings\n"
        "from fewstep.bench.cli import third_party_warnings_hidden\n"
        "with third_party_warnings_hidden():\n"
        "    warnings.warn_explicit('x', UserWarning, 'clip.py', 6, 'clip.clip')\n"
    )
    done = _python("-W", "error::UserWarning", "-c", code)
    assert done.returncode != 0 and "UserWarning: x" in done.stderr


@pytest.mark.kdiffusion
def test_compare_with_k_diffusion_prints_no_pkg_resources_warning(tmp_path: Path) -> None:
    """k-diffusion imports CLIP, which warns that pkg_resources is deprecated: not shown by ``fewstep compare``."""
    args = ["compare", "--solver", "ddim", "--nfe", "3", "--samples", "8", "--no-plot", "--no-report"]
    done = _python("-m", "fewstep", *args, "--peers", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert "k-diffusion:" in done.stdout  # the peers ran
    assert "Warning" not in done.stderr and "pkg_resources" not in done.stderr, done.stderr


# ---------------------------------------------------------------------------------------------------- start-up


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a fresh interpreter that imports the fewstep under test (warning options cleared)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["solvers"], ["compare", "--help"]], ids=" ".join)
def test_the_command_line_starts_without_torch(argv: list[str]) -> None:
    """``fewstep --help``, ``--version``, ``solvers`` and ``compare --help`` run through the launcher without
    importing torch (its import takes seconds)."""
    code = (
        "import sys\n"
        f"sys.argv = ['fewstep', *{argv!r}]\n"
        "import fewstep.cli\n"
        "try:\n"
        "    fewstep.cli.main()\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n"
    )
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "torch not imported"


def test_import_fewstep_loads_names_on_first_use() -> None:
    """``import fewstep`` imports no submodule (and so no torch); every public name loads on first use."""
    code = (
        "import sys\n"
        "import fewstep\n"
        "assert 'torch' not in sys.modules and 'fewstep.sampling' not in sys.modules\n"
        "from fewstep import sample\n"
        "assert sample is fewstep.sample and 'torch' in sys.modules\n"
        "missing = [n for n in fewstep.__all__ if getattr(fewstep, n, None) is None]\n"
        "assert not missing, missing\n"
        "print('ok')\n"
    )
    done = _python("-c", code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        fewstep.not_a_name  # noqa: B018
    assert set(fewstep.__all__) <= set(dir(fewstep))


def test_lazy_names_match_the_type_checking_imports() -> None:
    """The names ``fewstep`` loads on first use are those its ``if TYPE_CHECKING:`` block imports (what type
    checkers and editors see), each from the same module, and they are ``__all__``."""
    tree = ast.parse((SRC / "fewstep" / "__init__.py").read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    imported: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names:
            imported[alias.name] = node.module or alias.name
    lazy = {**{m: m for m in fewstep._SUBMODULES}, **fewstep._NAMES}
    assert imported == lazy
    assert sorted(lazy) == sorted(fewstep.__all__)
