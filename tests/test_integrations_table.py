"""docs/integrations.md's compatibility tables name every registered solver and every ComfyUI / k-diffusion sampler
name (a solver or sampler added without re-running ``python benchmarks/integrations_table.py`` fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import fewstep

DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


def table(marker: str) -> str:
    page = DOC.read_text()
    start, end = f"<!-- {marker}:start -->\n", f"<!-- {marker}:end -->"
    assert start in page and end in page, f"docs/integrations.md: missing the {marker} markers"
    return page[page.index(start) + len(start) : page.index(end)]


def first_column(text: str) -> set[str]:
    """The names in backticks in the first cell of each table row."""
    return {m.group(1) for m in re.finditer(r"^\|\s*`([^`]+)`", text, flags=re.MULTILINE)}


def test_pipeline_table_names_every_registered_solver() -> None:
    missing = {i.name for i in fewstep.solvers.available()} - first_column(table("integrations-pipelines"))
    assert not missing, f"re-run python benchmarks/integrations_table.py: missing {sorted(missing)}"


def test_sampler_table_names_every_ksampler() -> None:
    from fewstep.integrations import kdiffusion

    missing = set(kdiffusion.KSAMPLERS) - first_column(table("integrations-samplers"))
    assert not missing, f"re-run python benchmarks/integrations_table.py: missing {sorted(missing)}"
