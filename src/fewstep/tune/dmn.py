"""Direct minimisation (DMN): the final RMSE against the teacher, minimised over the logits of
:class:`~fewstep.tune.params.LogSNRIncrements` by the Nelder-Mead simplex method (Nelder & Mead 1965), which needs
no derivatives: each trial is one solver run on the calibration batch (``nfe`` calls) until the budget is spent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .budget import BudgetExhausted

# Nelder-Mead's coefficients (the standard ones): reflection, expansion, contraction, shrink.
REFLECT, EXPAND, CONTRACT, SHRINK = 1.0, 2.0, 0.5, 0.5


def nelder_mead(
    f: Callable[[np.ndarray], float], start: np.ndarray, step: float = 0.5, tol: float = 1e-10
) -> tuple[np.ndarray, float]:
    """The lowest point of ``f`` found by Nelder-Mead from ``start`` (initial simplex: ``start`` and ``start +
    step e_i``), and its value. Stops when the simplex's values agree to ``tol`` (relative) or ``f`` raises
    :class:`BudgetExhausted`."""
    x0 = np.asarray(start, dtype=np.float64)
    d = x0.size
    simplex = [x0.copy()]
    best: tuple[np.ndarray, float] = (x0.copy(), np.inf)

    def value(x: np.ndarray) -> float:
        nonlocal best
        v = f(x)
        if v < best[1]:
            best = (x.copy(), v)
        return v

    try:
        values = [value(x0)]
        for i in range(d):
            x = x0.copy()
            x[i] += step
            simplex.append(x)
            values.append(value(x))
        while True:
            order = np.argsort(values)
            simplex, values = [simplex[i] for i in order], [values[i] for i in order]
            if abs(values[-1] - values[0]) <= tol * max(abs(values[0]), 1e-300):
                break
            centroid = np.mean(simplex[:-1], axis=0)
            reflected = centroid + REFLECT * (centroid - simplex[-1])
            fr = value(reflected)
            if fr < values[0]:  # expand
                expanded = centroid + EXPAND * (reflected - centroid)
                fe = value(expanded)
                simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
            elif fr < values[-2]:
                simplex[-1], values[-1] = reflected, fr
            else:  # contract (outside if the reflection improved on the worst, else inside)
                outside = fr < values[-1]
                contracted = centroid + CONTRACT * ((reflected if outside else simplex[-1]) - centroid)
                fc = value(contracted)
                if fc < min(fr, values[-1]):
                    simplex[-1], values[-1] = contracted, fc
                else:  # shrink towards the best vertex
                    for i in range(1, d + 1):
                        simplex[i] = simplex[0] + SHRINK * (simplex[i] - simplex[0])
                        values[i] = value(simplex[i])
    except BudgetExhausted:
        pass
    return best
