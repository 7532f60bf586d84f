"""docs/solvers.md lists exactly the registered solvers, with their order and NFE per step."""

from __future__ import annotations

import re
from pathlib import Path

import fewstep

DOC = Path(__file__).resolve().parents[1] / "docs" / "solvers.md"
ROW = re.compile(r"^\| `(\w+)` \| (\d) \| (\d) \| (yes|no) \|", re.M)


def test_solver_table_matches_registry() -> None:
    rows = {m[0]: (int(m[1]), int(m[2]), m[3] == "yes") for m in ROW.findall(DOC.read_text())}
    registry = {i.name: (i.order, i.nfe_per_step, i.stochastic) for i in fewstep.solvers.available()}
    assert rows == registry
