"""Round-trip errors of the exact inversion methods (BDIA, EDICT-style coupling, edit-friendly DDPM noise).

For each method, dtype (float64, float32) and NFE (10, 20, 50): invert 256 exact samples of the 2-D mixture under
the VP schedule (epsilon prediction, logSNR spacing, ending at ``t_min``), run the method's sampler from the
latent with the same options, and report ``||x - x0|| / ||x0||`` and the network calls of the inversion and of the
reconstruction. ``cfg 7.5`` rows run the labelled mixture under classifier-free guidance at scale 7.5 (a
:class:`fewstep.Denoiser` with ``guidance_scale``; one call per evaluation, both branches batched).

Usage: ``python benchmarks/exact_inversion.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import fewstep
from fewstep.bench.targets import labelled_mixture_2d, mixture_2d
from fewstep.inversion import (
    bdia_invert,
    bdia_sample,
    edict_invert,
    edict_sample,
    edit_friendly_invert,
    edit_friendly_sample,
)

Method = Callable[[object, torch.Tensor, int, fewstep.CallCount, fewstep.CallCount], torch.Tensor]
VP = fewstep.VP()


def bdia(model: object, x0: torch.Tensor, nfe: int, inv: fewstep.CallCount, run: fewstep.CallCount) -> torch.Tensor:
    return bdia_sample(model, bdia_invert(model, x0, VP, nfe, calls=inv), VP, nfe, calls=run)  # type: ignore[arg-type]


def edict(model: object, x0: torch.Tensor, nfe: int, inv: fewstep.CallCount, run: fewstep.CallCount) -> torch.Tensor:
    return edict_sample(model, edict_invert(model, x0, VP, nfe, calls=inv), VP, nfe, calls=run).x  # type: ignore[arg-type]


def edit_friendly(
    model: object, x0: torch.Tensor, nfe: int, inv: fewstep.CallCount, run: fewstep.CallCount
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    latent = edit_friendly_invert(model, x0, VP, nfe, generator=gen, calls=inv)  # type: ignore[arg-type]
    return edit_friendly_sample(model, latent, VP, nfe, calls=run)  # type: ignore[arg-type]


METHODS: dict[str, Method] = {"bdia (gamma 1)": bdia, "edict (p 0.93)": edict, "edit-friendly (eta 1)": edit_friendly}


def main() -> None:
    labelled = labelled_mixture_2d()
    labels = torch.arange(256) % labelled.num_classes
    cases = {
        "plain": (mixture_2d().model(VP, "epsilon"), mixture_2d().sample(256, torch.Generator().manual_seed(0))),
        "cfg 7.5": (
            fewstep.Denoiser(
                labelled.model(VP, "epsilon"),
                VP,
                "epsilon",
                model_kwargs={"y": labels},
                guidance_scale=7.5,
                uncond_kwargs={"y": torch.full_like(labels, -1)},
            ),
            labelled.sample(labels, torch.Generator().manual_seed(0)),
        ),
    }
    print("| method | model | dtype | NFE | relative round-trip error | calls (invert / sample) |")
    print("|---|---|---|---|---|---|")
    for name, method in METHODS.items():
        for case, (model, data) in cases.items():
            for dtype in (torch.float64, torch.float32):
                for nfe in (10, 20, 50):
                    x0 = data.to(dtype)
                    inv, run = fewstep.CallCount(), fewstep.CallCount()
                    x = method(model, x0, nfe, inv, run)
                    err = float((x - x0).norm() / x0.norm())
                    print(f"| {name} | {case} | {str(dtype)[6:]} | {nfe} | {err:.1e} | {inv.network} / {run.network} |")


if __name__ == "__main__":
    main()
