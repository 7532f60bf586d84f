"""Golden outputs: every registered solver on three schedules at two NFE, adaptive runs, a callback trace,
guidance, the k-diffusion signature and the diffusers scheduler reproduce the recorded file
(``tests/golden/golden.pt``, made by ``python tests/golden/record.py`` before the core was reshaped) to 1e-12."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from cases import CASES, run_case  # noqa: E402

GOLDEN = torch.load(Path(__file__).resolve().parent / "golden" / "golden.pt")
RTOL = 1e-12
#: The adaptive GGF SDE run (2,500 evaluations, rtol 1e-3) amplifies last-bit differences between CPUs' math
#: libraries through its step-size controller: on a second CPU its times agree to 1e-12 for four steps, differ by
#: 2e-13 at the fifth and by 5e-5 at the eighth, and the result by 0.35% (16 more evaluations). These keys are
#: held to what survives that: the result within 2% and the evaluations within 2%.
CHAOTIC = ("adaptive/ggf_sde/",)
CHAOTIC_RTOL = 2e-2


def test_every_registered_solver_has_golden_cases() -> None:
    missing = sorted(set(CASES) - set(GOLDEN))
    assert not missing, f"no golden output for {missing}: record them with python tests/golden/record.py --add"


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden(key: str) -> None:
    want = GOLDEN[key]
    if isinstance(want, str):  # a recorded refusal
        with pytest.raises(Exception) as info:
            run_case(key)
        assert type(info.value).__name__ == want
        return
    got = run_case(key, want.get("nfe") if key.startswith("solver/") else None)
    assert set(got) == set(want)
    if key.startswith(CHAOTIC):
        assert abs(got["nfe"] - want["nfe"]) <= CHAOTIC_RTOL * want["nfe"], (got["nfe"], want["nfe"])
        err = float((got["x"] - want["x"]).abs().max() / want["x"].abs().max())
        assert err <= CHAOTIC_RTOL, f"{key} x: relative difference {err:.3g}"
        return
    for field, value in want.items():
        if isinstance(value, torch.Tensor):
            out = got[field]
            assert out.shape == value.shape and out.dtype == value.dtype, field
            scale = float(value.abs().max()) or 1.0
            err = float((out - value).abs().max()) / scale
            assert err <= RTOL, f"{key} {field}: relative difference {err:.3g}"
        else:
            assert got[field] == value, field
