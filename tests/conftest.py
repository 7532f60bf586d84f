"""Test-wide settings, and the ``kdiffusion`` marker.

k-diffusion is a test oracle that the ``test`` extra leaves out (it needs torchvision, which pins its own torch
build). The tests that compare with it carry the ``kdiffusion`` marker and are skipped, with the reason, where it
is not installed; ``pytest -m kdiffusion`` runs exactly them once it is. A test is marked

- by ``@pytest.mark.kdiffusion`` (a test that reaches k-diffusion through a helper);
- here, when its module imports k-diffusion at module level (``import k_diffusion``, ``from k_diffusion ...``,
  ``pytest.importorskip("k_diffusion...")``): every test of the module, as such a module is skipped whole
  without it;
- here, when the test's own body imports it the same way.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

# The tests evaluate many small tensors; torch's intra-op threads only add contention on a 2-core machine
# running pytest-xdist workers, so each test process uses one thread.
torch.set_num_threads(1)

MARKER = "kdiffusion"

#: How to run the marked tests (the versions of the project's CI).
KDIFFUSION_HINT = 'pip install torch==2.14.1 torchvision==0.29.1 k-diffusion "setuptools<81", then pytest -m kdiffusion'

SKIP_REASON = f"k-diffusion is not installed (a test oracle outside the test extra): {KDIFFUSION_HINT}"


def k_diffusion_installed() -> bool:
    return importlib.util.find_spec("k_diffusion") is not None


def _is_k_diffusion(module: str | None) -> bool:
    return module is not None and (module == "k_diffusion" or module.startswith("k_diffusion."))


def imports_k_diffusion(nodes: Iterable[ast.AST]) -> bool:
    """Whether any of ``nodes`` (walked whole) imports k-diffusion: an import statement or a
    ``pytest.importorskip("k_diffusion...")`` call."""
    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Import) and any(_is_k_diffusion(a.name) for a in node.names):
                return True
            if isinstance(node, ast.ImportFrom) and node.level == 0 and _is_k_diffusion(node.module):
                return True
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute | ast.Name)
                and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "importorskip"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and _is_k_diffusion(node.args[0].value)
            ):
                return True
    return False


@functools.cache
def module_imports_k_diffusion(path: Path) -> bool:
    """Whether the module at ``path`` imports k-diffusion when it is imported (outside its functions and classes)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return imports_k_diffusion(s for s in tree.body if not isinstance(s, defs))


def function_imports_k_diffusion(function: object) -> bool:
    """Whether the body of the test function ``function`` imports k-diffusion."""
    try:
        source = textwrap.dedent(inspect.getsource(function))  # type: ignore[arg-type]
    except (OSError, TypeError):
        return False
    return imports_k_diffusion([ast.parse(source)])


def needs_k_diffusion(item: pytest.Item) -> bool:
    if item.get_closest_marker(MARKER) is not None:
        return True
    path = getattr(item, "path", None)
    if isinstance(path, Path) and path.suffix == ".py" and module_imports_k_diffusion(path):
        return True
    function = getattr(item, "function", None)
    return function is not None and function_imports_k_diffusion(function)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    installed = k_diffusion_installed()
    for item in items:
        if needs_k_diffusion(item):
            if item.get_closest_marker(MARKER) is None:
                item.add_marker(MARKER)
            if not installed:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
