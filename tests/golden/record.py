"""Record the golden outputs that tests/test_golden.py reproduces.

Every registered solver on three schedules (a discrete VP, EDM, Flow) at two NFE values it can spend (about 5
and 10), float64, fixed noise and a fixed ``generator=`` for the stochastic ones; ``sample_adaptive`` with
three methods; the callback trace of one run; one k-diffusion-signature call; one diffusers-scheduler run.

Run ``python tests/golden/record.py`` only to re-baseline on purpose: a refactor must reproduce the stored
file, and a deliberate change of output is explained in the CHANGELOG. ``--add`` records only the cases the file
does not have yet (a newly registered solver) and leaves the recorded ones as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import CASES, run_case  # noqa: E402

OUT = Path(__file__).resolve().parent / "golden.pt"


def main() -> None:
    torch.set_num_threads(1)
    add = "--add" in sys.argv[1:]
    data: dict[str, object] = torch.load(OUT) if add and OUT.exists() else {}
    for key in CASES:
        if key in data:
            continue
        try:
            data[key] = run_case(key)
        except Exception as e:  # a configuration a solver refuses is recorded as its refusal
            data[key] = f"{type(e).__name__}"
    torch.save(data, OUT)
    n_err = sum(isinstance(v, str) for v in data.values())
    print(f"{len(data)} cases ({n_err} refusals) written to {OUT.name}")


if __name__ == "__main__":
    main()
