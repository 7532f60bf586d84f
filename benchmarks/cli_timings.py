"""How long the ``fewstep`` command takes: start-up (``--help``, ``solvers``) and ``compare --quick``.

Each command runs in a fresh process, as a user runs it (the ``fewstep`` script next to this Python, else
``python -m fewstep``), with the output directory in a temporary folder. For each it reports the wall time and the
CPU time (user + system) of the process, the minimum over ``--repeat`` runs (start-up) or ``--repeat-quick`` runs
(``compare --quick``), and whether torch was imported; ``compare --quick`` rows say whether the peer libraries
ran (the default when diffusers or k-diffusion is importable; command 1 of the README installs neither).

Wall time depends on what else runs on the machine; CPU time much less so. The README and docs/benchmarks.md quote
this script's output.

Usage: ``python benchmarks/cli_timings.py [--repeat 5] [--repeat-quick 2] [--no-peers-only] [--full]``
(``--full``: also the default run, ``fewstep compare --no-peers``: NFE 5, 10, 20, 50 and 256 samples).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command() -> list[str]:
    """How to run ``fewstep`` with this Python."""
    script = Path(sys.executable).with_name("fewstep")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fewstep"]


def run(args: list[str], out: Path | None) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``fewstep *args`` (``--out`` in a fresh ``out`` when given)."""
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
        args = [*args, "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([*command(), *args], capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"fewstep {' '.join(args)} failed:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def imports_torch(args: list[str]) -> bool:
    """Whether ``fewstep *args`` imports torch (run through the launcher in a fresh interpreter)."""
    code = (
        "import sys\n"
        f"sys.argv = ['fewstep', *{args!r}]\n"
        "import fewstep.cli\n"
        "try:\n"
        "    fewstep.cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each start-up command (the minimum is shown)")
    parser.add_argument("--repeat-quick", type=int, default=2, help="runs of each compare --quick")
    parser.add_argument("--no-peers-only", action="store_true", help="skip compare --quick with the peers")
    parser.add_argument("--full", action="store_true", help="also time the default run (once)")
    opts = parser.parse_args()

    peers = [m for m in ("diffusers", "k_diffusion") if importlib.util.find_spec(m) is not None]
    cases: list[tuple[list[str], int]] = [
        (["--help"], opts.repeat),
        (["solvers"], opts.repeat),
        (["compare", "--help"], opts.repeat),
        (["compare", "--quick", "--no-peers", "--no-plot", "--no-report"], opts.repeat_quick),
        (["compare", "--quick", "--no-peers"], opts.repeat_quick),
    ]
    if peers and not opts.no_peers_only:
        cases.append((["compare", "--quick"], opts.repeat_quick))
    if opts.full:
        cases.append((["compare", "--no-peers"], 1))

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, peers importable: {', '.join(peers) or 'none'}")
    print(f"{'command':<62} {'wall s':>7} {'CPU s':>7}  torch")
    with tempfile.TemporaryDirectory() as tmp:
        for args, repeat in cases:
            out = Path(tmp) / "out" if args[0] == "compare" and "--help" not in args else None
            runs = [run(args, out) for _ in range(max(1, repeat))]
            wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
            torch_used = "yes" if out is not None else ("yes" if imports_torch(args) else "no")
            print(f"{'fewstep ' + ' '.join(args):<62} {wall:>7.2f} {cpu:>7.2f}  {torch_used}")


if __name__ == "__main__":
    main()
