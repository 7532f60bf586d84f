"""``TunedSampler``: the result of :func:`fewstep.tune`, a sampler fitted to one model and schedule, saved as JSON.

It holds everything :func:`fewstep.sample` needs to reproduce the tuned run (the model-evaluation times, float64 and
decreasing from ``t_max``; the solver as a name plus JSON options; the NFE), and what it was fitted to and how well:
the schedule's description, the model's fingerprint, the teacher and its cost, the calibration and held-out errors
and the versions that made it.

Model fingerprint (:func:`model_fingerprint`):

- an ``nn.Module`` (or a :class:`~fewstep.Denoiser` wrapping one): ``"parameters"``, the SHA-256 of every parameter
  and buffer tensor's name, dtype, shape and bytes, in ``state_dict`` order;
- any other callable: ``"probe"``, the SHA-256 of its outputs on a fixed probe (a standard normal batch of two
  from ``torch.Generator().manual_seed(0)`` shaped like one calibration sample, float64, at the schedule's median
  time), rounded to 6 significant digits so that the last bits of a different BLAS do not change it.

Schedule description (:func:`schedule_description`): the schedule's ``repr`` and the SHA-256 of lambda(t) at 65
times from ``t_min`` to ``t_max`` rounded to 9 significant digits, so two schedules with the same name but other
parameters differ.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model import CallCount, Denoiser
from ..schedules import NoiseSchedule

#: The fields a saved sampler must have.
REQUIRED = ("times", "solver", "solver_options", "nfe", "method", "schedule", "fingerprint", "levels", "versions")

#: The JSON format version written by :meth:`TunedSampler.save` (:meth:`TunedSampler.load` reads only this one).
FORMAT_VERSION = 1


def _digest(chunks: list[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _rounded(values: Tensor, digits: int) -> bytes:
    """``values`` as text rounded to ``digits`` significant digits (stable across machines)."""
    flat = values.detach().to("cpu", torch.float64).reshape(-1).tolist()
    return ",".join(f"{v:.{digits - 1}e}" for v in flat).encode()


def schedule_description(schedule: NoiseSchedule) -> dict[str, str]:
    """``{"repr", "digest"}``: a comparable description of ``schedule`` (module docstring)."""
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule: must be a fewstep NoiseSchedule, got {type(schedule).__name__}")
    times = torch.linspace(schedule.t_min, schedule.t_max, 65, dtype=torch.float64)
    lam = schedule.lambda_(times).clamp(-1e6, 1e6)  # alpha(t_max) = 0 gives -inf
    return {"repr": repr(schedule), "digest": _digest([type(schedule).__name__.encode(), _rounded(lam, 9)])}


def model_fingerprint(
    model: Callable[..., Tensor] | Denoiser,
    schedule: NoiseSchedule,
    sample_shape: tuple[int, ...],
    calls: CallCount | None = None,
) -> dict[str, Any]:
    """``{"kind", "sha256", "sample_shape"}``: the fingerprint of ``model`` (module docstring); ``sample_shape`` is
    one sample's shape (the probe's, for a model without parameters, whose one network call is added to
    ``calls``)."""
    network = model.model if isinstance(model, Denoiser) else model
    if isinstance(network, torch.nn.Module):
        chunks = []
        for name, tensor in network.state_dict().items():
            t = tensor.detach().to("cpu").contiguous()
            chunks += [name.encode(), str(t.dtype).encode(), str(tuple(t.shape)).encode(), t.numpy().tobytes()]
        return {"kind": "parameters", "sha256": _digest(chunks), "sample_shape": list(sample_shape)}
    denoiser = model if isinstance(model, Denoiser) else Denoiser(model, schedule)
    probe = torch.randn(2, *sample_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t_mid = float(torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64).mean())
    point = denoiser.point(t_mid, 2, probe.device, torch.float64)
    with torch.no_grad():
        x0, _ = denoiser.stack(CallCount() if calls is None else calls, False).evaluate(probe, point)
    return {"kind": "probe", "sha256": _digest([_rounded(x0, 6)]), "sample_shape": list(sample_shape)}


def _versions() -> dict[str, Any]:
    package = sys.modules[__name__.partition(".")[0]]  # the fewstep package, imported before any submodule
    return {"format": FORMAT_VERSION, "fewstep": package.__version__, "torch": torch.__version__}


@dataclass
class TunedSampler:
    """A tuned sampler: pass it as ``fewstep.sample(model, noise, schedule, solver=tuned)``.

    ``times`` are the model-evaluation times (float64, strictly decreasing, the first ``t_max``; the run ends with a
    step to sigma = 0), ``solver`` and ``solver_options`` name the update rule (``solver_options`` JSON values only),
    ``nfe`` the evaluations one run spends, ``levels`` the k-diffusion noise levels ``sigma / alpha`` of the times.
    ``errors`` holds the RMSEs against the teacher: ``calibration`` / ``holdout`` of the tuned sampler, and
    ``start_calibration`` / ``start_holdout`` of the fixed configuration it started from (``start``), and
    ``default_holdout`` of fewstep's default for the schedule and NFE (``start["default_solver"]``, ``start[
    "default_spacing"]``).
    """

    times: list[float]
    solver: str
    nfe: int
    method: str
    schedule: dict[str, str]
    fingerprint: dict[str, Any]
    solver_options: dict[str, Any] = field(default_factory=dict)
    levels: list[float] = field(default_factory=list)
    prediction: str = "auto"
    time_input: str = "auto"
    teacher: dict[str, Any] = field(default_factory=dict)
    calls: int = 0
    seconds: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)
    start: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    versions: dict[str, Any] = field(default_factory=_versions)

    def __post_init__(self) -> None:
        t = np.asarray(self.times, dtype=np.float64)
        if t.ndim != 1 or t.size < 1 or not np.all(np.isfinite(t)) or (t.size > 1 and not np.all(np.diff(t) < 0)):
            raise ValueError("times: need a non-empty, finite, strictly decreasing list of schedule times")
        if not isinstance(self.solver, str) or not self.solver:
            raise TypeError(f"solver: must be a solver name, got {self.solver!r}")
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, int) or self.nfe < 1:
            raise ValueError(f"nfe: must be a positive integer, got {self.nfe!r}")
        try:
            json.dumps(self.solver_options)
        except TypeError as err:
            raise TypeError(f"solver_options: must be JSON-serialisable ({err})") from None
        self.times = [float(v) for v in t]

    def times_tensor(self) -> Tensor:
        """The model-evaluation times as a float64 tensor (what ``fewstep.sample(spacing=...)`` takes)."""
        return torch.tensor(self.times, dtype=torch.float64)

    def sigmas(self, warn: bool = True) -> Tensor:
        """k-diffusion's ``sigmas`` for a sampler of the caller's choice: the levels ``sigma / alpha`` of the times
        and a trailing 0. The caller's sampler replaces this one's solver: a per-step choice of solvers (``solver
        == "per_step"``) or fitted coefficients (``"nonstationary"``) are dropped, with a warning."""
        if not self.levels:
            raise ValueError("levels: this TunedSampler has no k-diffusion levels (made by another fewstep version)")
        if warn and self.solver in ("per_step", "nonstationary"):
            dropped = "per-step solver choices" if self.solver == "per_step" else "fitted coefficients"
            warnings.warn(
                f"TunedSampler.sigmas(): the {dropped} are dropped; the caller's sampler runs every step "
                "(use fewstep.integrations.kdiffusion.tuned_sampler(tuned) to keep them)",
                stacklevel=2,
            )
        if not math.isfinite(self.levels[0]):
            raise ValueError(
                "levels: the first time has alpha = 0 (an infinite sigma / alpha); k-diffusion cannot start there"
            )
        return torch.tensor([*self.levels, 0.0], dtype=torch.float64)

    def check(
        self, model: Callable[..., Tensor] | Denoiser | None = None, schedule: NoiseSchedule | None = None
    ) -> None:
        """ValueError naming what differs when ``schedule`` is not the tuned one, or ``model``'s fingerprint
        (:func:`model_fingerprint`) is another model's."""
        if schedule is not None:
            own = schedule_description(schedule)
            if own["digest"] != self.schedule.get("digest"):
                raise ValueError(
                    f"schedule: the sampler was tuned for {self.schedule.get('repr')!r}, not {own['repr']!r} "
                    "(their noise levels differ)"
                )
        if model is not None:
            if schedule is None:
                schedule = model.schedule if isinstance(model, Denoiser) else None
            if schedule is None and self.fingerprint.get("kind") == "probe":
                raise TypeError("schedule: needed to fingerprint a model without parameters (pass schedule=)")
            shape = tuple(self.fingerprint.get("sample_shape", ()))  # type: ignore[arg-type]
            own_fp = model_fingerprint(model, schedule, shape)  # type: ignore[arg-type]
            if own_fp["kind"] != self.fingerprint.get("kind") or own_fp["sha256"] != self.fingerprint.get("sha256"):
                raise ValueError(
                    f"model: its fingerprint ({own_fp['kind']} {own_fp['sha256'][:12]}) is not that of the tuned "
                    f"model ({self.fingerprint.get('kind')} {str(self.fingerprint.get('sha256'))[:12]})"
                )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready fields."""
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Write this sampler as JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=True) + "\n")

    @classmethod
    def from_dict(cls, data: Any) -> TunedSampler:
        """The sampler of a :meth:`to_dict` mapping: ValueError naming an unknown format version, a missing field or
        an unknown one."""
        if not isinstance(data, dict):
            raise ValueError(f"TunedSampler: expected a JSON object, got {type(data).__name__}")
        version = data.get("versions", {}).get("format") if isinstance(data.get("versions"), dict) else None
        if version != FORMAT_VERSION:
            raise ValueError(
                f"versions.format: this fewstep reads TunedSampler format {FORMAT_VERSION}, got {version!r}"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in REQUIRED if n not in data)
        if missing:
            raise ValueError(f"TunedSampler: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"TunedSampler: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: Callable[..., Tensor] | Denoiser | None = None,
        schedule: NoiseSchedule | None = None,
    ) -> TunedSampler:
        """Read a sampler saved by :meth:`save`; with ``model``/``schedule``, check they are the tuned ones
        (:meth:`check`)."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"path: {path} is not valid JSON ({err})") from None
        tuned = cls.from_dict(data)
        tuned.check(model, schedule)
        return tuned
