"""The ComfyUI nodes' logic, with the inputs ComfyUI passes (ComfyUI itself is not on the package index)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.integrations import kdiffusion
from fewstep.integrations.comfyui import NODE_CLASS_MAPPINGS, FewstepSampler, FewstepSigmas, sigmas_for

EDM = fewstep.EDM()


class ModelSampling:  # ComfyUI's model_sampling object: its noise levels
    sigma_min, sigma_max = 0.002, 80.0


class Model:  # ComfyUI's MODEL patcher, as far as the node uses it
    def get_model_object(self, name: str) -> Any:
        assert name == "model_sampling"
        return ModelSampling()


def test_nodes_follow_comfyui_conventions() -> None:
    for node in NODE_CLASS_MAPPINGS.values():
        spec = node.INPUT_TYPES()
        assert set(spec) == {"required"} and isinstance(node.RETURN_TYPES, tuple)
        assert callable(getattr(node(), node.FUNCTION)) and node.CATEGORY.startswith("sampling/custom_sampling")
    solvers = FewstepSampler.INPUT_TYPES()["required"]["solver"][0]
    assert set(solvers) == {info.name for info in fewstep.solvers.available()}
    assert FewstepSigmas.INPUT_TYPES()["required"]["model"] == ("MODEL",)


def test_sigmas_node_gives_k_diffusion_style_levels() -> None:
    (sigmas,) = FewstepSigmas().get_sigmas(Model(), 10, "karras")
    assert sigmas.shape == (11,) and sigmas.dtype == torch.float32 and float(sigmas[-1]) == 0.0
    assert float(sigmas[0]) == pytest.approx(80.0) and float(sigmas[-2]) == pytest.approx(0.002)
    assert bool((sigmas[:-1] > sigmas[1:]).all())
    # karras here is k-diffusion's get_sigmas_karras (rho = 7)
    ramp = torch.linspace(0, 1, 10, dtype=torch.float64)
    karras = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(sigmas[:-1].double(), karras, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="spacing: choose one of"):
        sigmas_for(0.002, 80.0, 10, "trailing")
    with pytest.raises(ValueError, match="steps"):
        sigmas_for(0.002, 80.0, 0, "karras")


def test_sampler_node_runs_with_comfyui_inputs() -> None:
    """What KSAMPLER calls: the function with a k-diffusion-wrapped model, noise at sigma_max, the node's sigmas,
    extra_args holding ComfyUI's seed, and a callback."""
    (sigmas,) = FewstepSigmas().get_sigmas(Model(), 8, "karras")
    denoiser = kdiffusion.wrap(fewstep.Denoiser(mixture_2d().model(EDM, "sample"), EDM, "sample"))
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    seen: list[dict[str, Any]] = []
    fn = FewstepSampler.sampler_function("dpmpp_2m_sde")
    a = fn(denoiser, x, sigmas, extra_args={"seed": 7}, callback=seen.append, disable=True)
    b = fn(denoiser, x, sigmas, extra_args={"seed": 7}, disable=True)
    assert torch.equal(a, b) and len(seen) == 8 and torch.isfinite(a).all()
    assert not torch.equal(a, fn(denoiser, x, sigmas, extra_args={"seed": 8}, disable=True))
    with pytest.raises(ValueError, match="solver: unknown name"):
        FewstepSampler.sampler_function("dpmpp_9m")


def test_get_sampler_wraps_the_function_in_comfyuis_ksampler(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImportError, match="runs inside ComfyUI"):
        FewstepSampler().get_sampler("ipndm")
    comfy = types.ModuleType("comfy")
    samplers = types.ModuleType("comfy.samplers")

    class KSAMPLER:  # ComfyUI's class holds the function it calls
        def __init__(self, sampler_function: Any) -> None:
            self.sampler_function = sampler_function

    samplers.KSAMPLER = KSAMPLER  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.samplers", samplers)
    (sampler,) = FewstepSampler().get_sampler("ipndm")
    assert sampler.sampler_function is kdiffusion.SAMPLERS["ipndm"]


def test_the_custom_nodes_folder_exports_the_mappings() -> None:
    init = Path(__file__).resolve().parents[1] / "comfyui" / "fewstep_nodes" / "__init__.py"
    spec = importlib.util.spec_from_file_location("fewstep_nodes", init)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
