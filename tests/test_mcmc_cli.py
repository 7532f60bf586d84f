"""``fewstep mcmc`` and fewstep.bench.mcmc_compare: the torch-free target list, the table and JSON, errors, the
measurements against exact answers and the gradient-budget matching against hand-counted costs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

from fewstep.bench.cli import main
from fewstep.bench.mcmc_cli import MCMC_TARGETS
from fewstep.bench.mcmc_compare import _draws_for_budget, compare_samplers, markdown_table, measure
from fewstep.bench.targets.densities import BREAST_CANCER_REFERENCE, DENSITY_TARGETS, GaussianDensity, density_target
from fewstep.langevin import Chains

TARGET = GaussianDensity(torch.tensor([1.0, -1.0]), torch.tensor([1.0, 4.0]), name="g2")


def run(*args: str):
    return CliRunner().invoke(main, ["mcmc", *args])


def test_target_names_match_and_help_imports_no_torch() -> None:
    assert MCMC_TARGETS == tuple(DENSITY_TARGETS)
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom fewstep.bench.cli import main\n"
        "r = CliRunner().invoke(main, ['mcmc', '--help'])\nassert r.exit_code == 0 and 'logistic_regression' in r.output\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_measure_on_exact_draws() -> None:
    """iid exact draws: ESS about the number of draws, small moment errors, W2 and MMD near zero."""
    draws = TARGET.sample(4 * 500, torch.Generator().manual_seed(0)).reshape(4, 500, 2)
    chains = Chains(draws, None, gradient_evaluations=1000, step_size=0.1, inverse_mass=None, warmup=0, sampler="x")
    row = measure(TARGET, chains, seconds=1.0)
    assert 1600 < row.ess_bulk < 2600 and row.split_rhat < 1.01
    assert abs(row.ess_bulk_per_gradient - row.ess_bulk / 4000) < 1e-12  # ESS over 4 chains x 1000 gradients
    assert row.mean_error is not None and row.mean_error < 0.1  # about 4 standard errors of the mean (1/sqrt(2000))
    assert row.variance_error is not None and row.variance_error < 0.15
    assert row.sliced_w2 is not None and row.sliced_w2 < 0.15 and row.mmd is not None and row.mmd < 5e-3
    shifted = Chains(draws + 1.0, None, 1000, 0.1, None, 0, "x")
    far = measure(TARGET, shifted, seconds=1.0)
    assert far.mean_error is not None and far.mean_error > 0.4 and far.sliced_w2 > 0.5  # type: ignore[operator]


def test_budget_matching_counts_gradients() -> None:
    """MALA spends one gradient per iteration plus the initial one, the randomized midpoint method two per kept
    draw (its warm-up, adjusted OBABO, one): the draws for a budget of 300 with 50 warm-up iterations."""
    x0 = TARGET.initial(2, torch.Generator().manual_seed(0))
    assert _draws_for_budget(TARGET, "mala", x0, 50, 300, 0) == 300 - 1 - 50
    assert _draws_for_budget(TARGET, "randomized_midpoint", x0, 50, 300, 0) == (300 - 1 - 50) // 2
    rows = compare_samplers(TARGET, ["mala", "obabo"], chains=2, draws=40, warmup=30, match_budget=False)
    assert [r.sampler for r in rows] == ["mala", "obabo"] and all(r.gradient_evaluations == 71 for r in rows)
    table = markdown_table(rows).splitlines()
    assert len(table) == 4 and table[2].startswith("| mala | 71 | 40 |")


def test_cli_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    r = run("--target", "banana", "--samplers", "mala,baoab", "--no-peers", "--chains", "2", "--draws", "60",
            "--warmup", "40", "--out", str(out))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "banana_2d (d = 2)" in r.output and "| mala |" in r.output and "| baoab |" in r.output
    rows = json.loads(out.read_text())
    assert [row["sampler"] for row in rows] == ["mala", "baoab"] and rows[0]["draws"] == 60


def test_cli_errors() -> None:
    r = run("--samplers", "mal", "--no-peers")
    assert r.exit_code == 2 and "unknown sampler 'mal'" in r.output and "mala" in r.output
    r = run("--target", "funel")
    assert r.exit_code == 2 and "funnel" in r.output
    ref = BREAST_CANCER_REFERENCE
    r = run("--target", "banana", "--no-peers", "--reference", str(ref))
    assert r.exit_code == 2 and "only the logistic_regression target" in r.output
    assert density_target("gaussian", 3).dim == 3


def test_cli_warmup_tolerance_lets_the_kinetic_warmup_run_on(tmp_path: Path) -> None:
    """``--warmup-tolerance`` reaches the kinetic samplers only: their warm-up may run past ``--warmup`` (more
    gradients than the fixed one), MALA's does not change; a tolerance of 0 is refused by name."""
    spent = []
    for extra in ((), ("--warmup-tolerance", "0.05")):
        out = tmp_path / f"rows{len(extra)}.json"
        r = run("--target", "gaussian", "--dim", "10", "--samplers", "mala,baoab", "--no-peers", "--chains", "2",
                "--draws", "400", "--warmup", "20", "--out", str(out), *extra)  # fmt: skip
        assert r.exit_code == 0, r.output
        spent.append({row["sampler"]: row["gradient_evaluations"] for row in json.loads(out.read_text())})
    assert spent[1]["mala"] == spent[0]["mala"] and spent[1]["baoab"] > spent[0]["baoab"]
    r = run("--samplers", "baoab", "--no-peers", "--warmup-tolerance", "0")
    assert r.exit_code == 2 and "--warmup-tolerance" in r.output
