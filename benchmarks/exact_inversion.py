"""Round-trip errors of the exact inversion methods (BDIA, EDICT-style coupling, edit-friendly DDPM noise).

For each method, dtype (float64, float32) and NFE (10, 20, 50): invert 256 exact samples of the 2-D mixture under
the VP schedule (epsilon prediction, logSNR spacing, ending at ``t_min``), run the method's sampler from the
latent with the same options, and report ``||x - x0|| / ||x0||`` and the network calls of the inversion and of the
reconstruction. ``cfg 7.5`` rows run the labelled mixture under classifier-free guidance at scale 7.5 (a
:class:`fewstep.Denoiser` with ``guidance_scale``; one call per evaluation, both branches batched).

Then, for EDICT under CFG 7.5 in float64, why its round trip stays above 1e-10 at p = 0.93: for each mixing
weight ``p`` and NFE, the round trip and the sampler's gain, ``max_i (||x_i' - x_i|| / ||x_i||) / delta``: the
relative change of each sample ``x_i`` of ``edict_sample`` when its latent is moved by a relative ``delta = 1e-9``,
in the same direction in both states (``sym``) or in opposite directions (``anti``: the coupled states' difference).

``--target learned`` / ``--target digits`` run the round trips on the learned MLP target or the digits UNet instead
(unconditional epsilon networks, cached after their first training; no CFG rows).

Usage: ``python benchmarks/exact_inversion.py [--only gain] [--target learned|digits]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

import fewstep
from fewstep.bench.targets import digits_unet_target, labelled_mixture_2d, learned_target, mixture_2d
from fewstep.inversion import (
    CoupledState,
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


def relative_change(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).max())


def edict_gain(model: object, x0: torch.Tensor) -> None:
    """EDICT's round trip and the gains of its sampler (module docstring), float64, CFG 7.5."""
    print("\n| p | NFE | round trip | gain (sym) | gain (anti) |")
    print("|---|---|---|---|---|")
    delta = 1e-9
    for p in (0.8, 0.9, 0.93, 0.97):
        for nfe in (10, 20, 50):
            latent = edict_invert(model, x0, VP, nfe, p=p)  # type: ignore[arg-type]
            x = edict_sample(model, latent, VP, nfe, p=p).x  # type: ignore[arg-type]
            gen = torch.Generator().manual_seed(2)
            d = torch.randn(latent.x.shape, generator=gen, dtype=x0.dtype) * latent.x.norm(dim=1, keepdim=True) * delta
            sym = edict_sample(model, CoupledState(latent.x + d, latent.y + d), VP, nfe, p=p).x  # type: ignore[arg-type]
            anti = edict_sample(model, CoupledState(latent.x + d, latent.y - d), VP, nfe, p=p).x  # type: ignore[arg-type]
            print(
                f"| {p} | {nfe} | {float((x - x0).norm() / x0.norm()):.1e} "
                f"| {relative_change(sym, x) / delta:.1e} | {relative_change(anti, x) / delta:.1e} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["round-trip", "gain"], default=None)
    parser.add_argument("--target", choices=["mixture", "learned", "digits"], default="mixture")
    args = parser.parse_args()
    labelled = labelled_mixture_2d()
    labels = torch.arange(256) % labelled.num_classes
    if args.target != "mixture":
        load = learned_target if args.target == "learned" else digits_unet_target
        nets = {dtype: load(dtype=dtype).model for dtype in (torch.float32, torch.float64)}
        data = load().data.sample(256, torch.Generator().manual_seed(0))
        round_trips({args.target: (lambda x, t: nets[x.dtype](x, t), data)})
        return
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
    if args.only != "round-trip":
        model, data = cases["cfg 7.5"]
        edict_gain(model, data.to(torch.float64))
    if args.only != "gain":
        round_trips(cases)


def round_trips(cases: dict[str, tuple[object, torch.Tensor]]) -> None:
    """The round-trip table (module docstring) of every method on each case (model, data)."""
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
