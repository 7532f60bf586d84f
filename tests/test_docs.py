"""The Python examples in README.md and docs/*.md run, in order, one namespace per file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
#: The README's pipelines -> the tiny random pipeline of the same class (tests/test_diffusers_pipelines.py).
TINY = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}


class TinyPipeline:
    """A tiny random pipeline standing in for a checkpoint: attributes go to it, ``to()`` keeps it on the CPU in
    float32, and a call is made at the tiny size (16x16 pixels, short prompts)."""

    def __init__(self, pipe: Any, size: dict[str, Any]) -> None:
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "_size", size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pipe, name, value)

    def to(self, *args: Any, **kwargs: Any) -> TinyPipeline:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._pipe(*args, **{**kwargs, **self._size})


@pytest.fixture
def tiny_pipelines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """``from_pretrained`` of the README's diffusers pipelines returns a tiny random pipeline of the same class (no
    download: the tests run offline), so the README's examples run as written."""
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from test_diffusers_pipelines import CASES

    for cls_name, case_name in TINY.items():
        case = CASES[case_name]

        def load(*args: Any, _case: Any = case, **kwargs: Any) -> TinyPipeline:
            pipe = _case.build(tmp_path)
            pipe.set_progress_bar_config(disable=True)
            size = {k: v for k, v in _case.call.items() if k in ("height", "width", "max_sequence_length")}
            return TinyPipeline(pipe, size)

        monkeypatch.setattr(getattr(diffusers, cls_name), "from_pretrained", load)
    yield


@pytest.mark.parametrize("path", [p for p in DOCS if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_examples_run(path: Path, request: pytest.FixtureRequest) -> None:
    if path.name == "README.md":
        request.getfixturevalue("tiny_pipelines")
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for i, code in enumerate(BLOCK.findall(path.read_text())):
        exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)  # noqa: S102


def test_no_example_is_left_unexecuted() -> None:
    """Every code block of README.md is Python (run above) or a shell command: no example hides in a text block."""
    fences = re.findall(r"```(\w*)\n", (ROOT / "README.md").read_text())
    assert set(fences) <= {"python", "bash", ""}, fences
    assert "text" not in fences
