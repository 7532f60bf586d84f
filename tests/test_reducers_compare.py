"""fewstep compare's wall-clock columns (model and solver time apart) and its cost-vs-error plot."""

from __future__ import annotations

import math
from pathlib import Path

import fewstep
from fewstep.bench import compare as cmp
from fewstep.bench.targets import mixture_2d


def test_timed_rows_split_wall_clock_into_model_and_solver_time(tmp_path: Path) -> None:
    result = cmp.compare(mixture_2d(), fewstep.VP(), ["dpmpp_2m", "euler"], [4, 8], samples=16, timing=True)
    for row in result.rows:
        assert row.seconds > 0 and row.model_seconds > 0 and row.solver_seconds > 0
        assert math.isclose(row.model_seconds + row.solver_seconds, row.seconds, rel_tol=1e-9)
    table = cmp.format_table(result.rows, [4, 8], "model_seconds")
    assert "model-call stack" in table and "dpmpp_2m" in table
    assert cmp.plot_cost(result.rows, tmp_path / "cost.png", "cost")
    assert (tmp_path / "cost.png").stat().st_size > 0
    untimed = cmp.compare(mixture_2d(), fewstep.VP(), ["dpmpp_2m"], [4], samples=16)
    assert math.isnan(untimed.rows[0].seconds)
    assert not cmp.plot_cost(untimed.rows, tmp_path / "none.png", "none")
    assert untimed.rows[0].rmse == result.rows[0].rmse  # the clock changes nothing in the run
