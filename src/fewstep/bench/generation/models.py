"""The model of a run: an embedded exact target (no download), or the user's ``module:function`` factory.

A factory follows ``fewstep compare --model``'s convention (:func:`fewstep.bench.user_model.load_model`): it returns
``(model, schedule, prediction, shape)`` or a :class:`~fewstep.bench.user_model.UserModel`, which may add
per-index conditioning, the unconditional branch's arguments and the data range. It is called once per process,
after the process group is set up, so it may place the network on ``torch.cuda.current_device()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..user_model import UserModel, load_model

__all__ = ["EMBEDDED", "DEFAULT_MODEL", "model_name", "resolve_model"]

#: The embedded exact targets (Gaussian mixtures with a closed-form denoiser, under the VP schedule, predicting
#: epsilon): image (3 x 32 x 32), digits (1 x 8 x 8), nd64 (64-D) and the 2-D mixtures.
EMBEDDED = ("image", "digits", "nd64", "default", "ring", "grid", "wide", "unbalanced")

#: The model when none is given.
DEFAULT_MODEL = "image"


def _embedded(name: str) -> UserModel:
    from ...schedules import VP
    from ..compare import make_target

    target = make_target(name)
    schedule = VP()
    shape = getattr(target, "image_shape", None) or (target.dim,)
    if name == "digits":
        shape = (1, *shape) if len(shape) == 2 else shape
    return UserModel(target.model(schedule, "epsilon"), schedule, "epsilon", tuple(shape), name=name)


def model_name(spec: str | Callable[[], Any]) -> str:
    """How the configuration names ``spec``: the string itself, or a factory's ``module:qualified name``."""
    if isinstance(spec, str):
        return spec
    return f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', type(spec).__name__)}"


def _from_factory(factory: Callable[[], Any]) -> UserModel:
    """What a factory callable returns, as a :class:`UserModel` (TypeError naming ``model`` otherwise)."""
    made = factory()
    if isinstance(made, UserModel):
        return made
    if isinstance(made, tuple) and len(made) == 4:
        model, schedule, prediction, shape = made
        return UserModel(model, schedule, prediction, tuple(shape), name=model_name(factory))
    raise TypeError(f"model: {model_name(factory)} must return a UserModel or (model, schedule, prediction, shape)")


def resolve_model(spec: str | Callable[[], Any]) -> UserModel:
    """The :class:`UserModel` of an embedded target's name, a ``module:function`` factory or a factory callable;
    ValueError naming ``model`` when the factory cannot be imported, raises, or returns something else."""
    if callable(spec):
        try:
            user = _from_factory(spec)
        except TypeError as err:
            if str(err).startswith("model: "):
                raise
            raise ValueError(f"model: the factory {model_name(spec)} raised TypeError: {err}") from err
        except Exception as err:  # the user's code: any failure is a bad model
            raise ValueError(f"model: the factory {model_name(spec)} raised {type(err).__name__}: {err}") from err
        return _checked(user, model_name(spec))
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"model: must be an embedded target ({', '.join(EMBEDDED)}) or module:function, got {spec!r}")
    if spec in EMBEDDED:
        return _embedded(spec)
    if ":" not in spec:
        raise ValueError(
            f"model: give module:function or one of the embedded targets {', '.join(EMBEDDED)}, got {spec!r}"
        )
    try:
        user = load_model(spec)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model: cannot import {spec} ({type(err).__name__}: {err})") from err
    except (ValueError, TypeError) as err:
        if str(err).startswith("model: "):
            raise
        raise ValueError(f"model: the factory {spec} raised {type(err).__name__}: {err}") from err
    except Exception as err:  # the user's code: any failure is a bad --model
        raise ValueError(f"model: the factory {spec} raised {type(err).__name__}: {err}") from err
    return _checked(user, spec)


def _checked(user: UserModel, name: str) -> UserModel:
    """``user`` when its data range is an interval (ValueError naming ``model`` otherwise)."""
    lo, hi = (float(v) for v in user.data_range)
    if not lo < hi:
        raise ValueError(f"model: {name}'s data_range must be (low, high) with low < high, got {user.data_range!r}")
    return user
