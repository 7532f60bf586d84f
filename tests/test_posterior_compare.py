"""The posterior metrics, the posterior problems and ``fewstep compare --posterior``."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from fewstep.bench import posterior_compare as pc
from fewstep.bench.cli import main
from fewstep.bench.metrics import component_weight_error, exact_spread, spread, within_spread
from fewstep.bench.targets import GaussianMixture, mixture_2d

F64 = torch.float64


def test_spread_by_hand():
    s = spread([1.0, 2.0, 3.0])
    assert s.mean == pytest.approx(2.0)
    assert s.stderr == pytest.approx(1.0 / math.sqrt(3.0))  # sample std 1
    assert spread([5.0]).stderr == 0.0
    assert within_spread(spread([1.0, 1.2]), spread([1.0, 1.0]), k=3.0)
    assert not within_spread(spread([2.0, 2.0]), spread([1.0, 1.0]))
    with pytest.raises(ValueError, match="values"):
        spread([])


def test_component_weight_error_of_exact_and_of_wrong_samples():
    mix = GaussianMixture([[-3.0, 0.0], [0.0, 0.0], [3.0, 1.0]], [0.5, 0.4, 0.6], [0.2, 0.5, 0.3])
    n = 4000
    exact = component_weight_error(mix.sample(n, torch.Generator().manual_seed(0)), mix)
    assert exact.l1 < 4 * 3 * math.sqrt(0.25 / n)  # sum of three errors of size sqrt(w (1 - w) / n) <= 0.5/sqrt(n)
    one_mode = torch.tensor([[-3.0, 0.0]], dtype=F64) + 0.1 * torch.randn(n, 2, dtype=F64)
    wrong = component_weight_error(one_mode, mix)
    assert wrong.l1 == pytest.approx(2 * (1 - 0.2), abs=1e-3)  # all the weight on component 0
    assert wrong.max == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ValueError, match="samples: need 2"):
        component_weight_error(torch.zeros(3, 4), mix)


def test_exact_spread_of_an_exact_sampler_is_within_itself():
    mix = mixture_2d("wide")
    ref = exact_spread(lambda x, _y: component_weight_error(x, mix).l1, mix, 200, 5, seed=0)
    other = exact_spread(lambda x, _y: component_weight_error(x, mix).l1, mix, 200, 5, seed=100)
    assert len(ref.values) == 5 and ref.stderr > 0
    assert within_spread(other, ref)
    with pytest.raises(ValueError, match="replicates"):
        exact_spread(lambda x, y: 0.0, mix, 10, 0)


@pytest.mark.parametrize("kind", pc.PROBLEMS)
def test_problems_keep_two_components(kind):
    problem = pc.posterior_problem(kind, "2d")
    top = problem.exact.weights.sort(descending=True).values
    assert float(top[1]) > 0.05  # a multimodal posterior: the component weights are a real test
    x = problem.exact.sample(16, torch.Generator().manual_seed(0))
    assert problem.score(x).shape == (16,)


def test_problem_errors():
    with pytest.raises(
        ValueError, match="posterior: choose one of inpaint, inpaint_noiseless, linear, linear_noiseless, reward"
    ):
        pc.posterior_problem("deblur")
    with pytest.raises(ValueError, match="target"):
        pc.posterior_problem("inpaint", "3d")
    with pytest.raises(ValueError, match="particles"):
        pc.run_method("prior", pc.posterior_problem("reward"), 4, particles=0)


def test_compare_rows_and_costs():
    problem = pc.posterior_problem("reward", "2d")
    rows, exact = pc.compare_posterior(problem, ["prior", "dps"], nfe=6, n=48)
    by = {r.method: r for r in rows}
    assert by["prior"].nfe == 6  # network calls only
    assert by["dps"].nfe == 12  # one backward pass per evaluation through the network
    assert exact.method == "exact" and exact.nfe == 0
    # plain sampling ignores the reward: its mean reward is below the exact tilt's
    assert by["prior"].reward.mean < exact.reward.mean
    table = pc.format_posterior_table(rows, exact, "reward")
    assert "weight L1" in table and "exact" in table


def test_noiseless_inpainting_projection_reproduces_the_observation():
    problem = pc.posterior_problem("inpaint_noiseless", "2d")
    assert "projection" in pc.available_methods("inpaint_noiseless")
    assert "dps" not in pc.available_methods("inpaint_noiseless")  # no Gaussian likelihood at noise 0
    assert "inpaint_smc" in pc.available_methods("inpaint_noiseless")
    rows, exact = pc.compare_posterior(problem, ["prior", "projection", "inpaint_smc"], particles=(4,), nfe=6, n=48)
    by = {r.method: r for r in rows}
    assert by["projection"].reward.mean == 0.0  # max |A x - y|: the observed coordinates exactly
    assert by["inpaint_smc"].reward.mean == 0.0 and by["inpaint_smc"].nfe == 6
    assert by["prior"].reward.mean > 0.1
    assert exact.reward.mean < 1e-12 and problem.score_name == "max |Ax-y|"


def test_noiseless_linear_problem_is_met_by_projection_and_linear_smc():
    problem = pc.posterior_problem("linear_noiseless", "64d")
    assert problem.measurement is not None and problem.measurement.noiseless
    assert {"projection", "linear_smc", "pigdm"} <= set(pc.available_methods("linear_noiseless"))
    rows, exact = pc.compare_posterior(problem, ["prior", "projection", "linear_smc"], particles=(4,), nfe=6, n=48)
    by = {r.method: r for r in rows}
    assert by["linear_smc"].reward.mean < 1e-9 and by["linear_smc"].nfe == 6  # max |A x - y|, to rounding
    assert by["projection"].reward.mean < 1e-9
    assert by["prior"].reward.mean > 0.1 and exact.reward.mean < 1e-6  # exact samples: a near-singular covariance


def test_cli_posterior():
    result = CliRunner().invoke(
        main, ["compare", "--posterior", "linear", "--samples", "32", "--nfe", "5", "--particles", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "prior" in result.output and "exact" in result.output
    bad = CliRunner().invoke(main, ["compare", "--posterior", "linear", "--target", "digits"])
    assert bad.exit_code != 0 and "--target default or --target nd64" in bad.output


def test_catalog_lists_the_problems():
    from fewstep.bench import catalog

    assert catalog.POSTERIOR_PROBLEMS == pc.PROBLEMS
