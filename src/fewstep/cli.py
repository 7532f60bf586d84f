"""The ``fewstep`` console script (also ``python -m fewstep``): a standard-library launcher for
:mod:`fewstep.bench.cli`.

The command line is part of the benchmark tooling, whose dependencies are the ``bench`` extra. When one of
them is missing the launcher says which and how to install it, on one line of stderr, and exits with status 2
instead of failing with a traceback (or, for the packages the command imports late, after a long run).
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["main", "missing_bench_packages", "BENCH_PACKAGES", "INSTALL_HINT"]

#: The top-level modules of the ``bench`` extra's packages, by import name.
BENCH_PACKAGES = ("matplotlib", "click", "sklearn", "tqdm")

#: How to install the ``bench`` extra.
INSTALL_HINT = 'pip install "fewstep[bench]"'

#: The package (distribution) name of a :data:`BENCH_PACKAGES` module where it differs from the module name.
_PACKAGE_NAMES = {"sklearn": "scikit-learn"}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec: it is there
        return True


def missing_bench_packages() -> list[str]:
    """The packages of the ``bench`` extra that cannot be imported here (none are imported to find out)."""
    return [_PACKAGE_NAMES.get(m, m) for m in BENCH_PACKAGES if not _importable(m)]


def _exit_missing(packages: list[str]) -> None:
    """Print which packages are missing and the fix, on one line of stderr, and exit with status 2."""
    what = f"package {packages[0]} is" if len(packages) == 1 else f"packages {', '.join(packages)} are"
    print(f"fewstep: the command line needs the bench extra; {what} missing: {INSTALL_HINT}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    """Run the ``fewstep`` command line (:func:`fewstep.bench.cli.main`), or exit with status 2 and a one-line
    message naming the missing package and the fix when a package of the ``bench`` extra is not installed."""
    missing = missing_bench_packages()
    if missing:
        _exit_missing(missing)
    try:
        from .bench.cli import main as bench_main
    except ImportError as err:
        top = (err.name or "").partition(".")[0]
        if top not in BENCH_PACKAGES:
            raise  # not an installation problem: show the traceback
        _exit_missing([_PACKAGE_NAMES.get(top, top)])
    bench_main()
