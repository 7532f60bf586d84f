"""A self-contained HTML report of a ``fewstep compare`` run: settings, tables, and the PNGs as data URIs."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .compare import LABELS, Row
from .output import atomic_write_text

__all__ = ["render_report", "write_report"]


def _cell(value: float, metric: str, best: bool, nonfinite: bool = False) -> str:
    if nonfinite:
        return "<td class='bad'>nan!</td>"
    if math.isnan(value):
        return "<td>-</td>"
    text = f"{value:.3f}" if metric == "coverage" else f"{value:.2e}"
    return f"<td><b>{text}</b></td>" if best else f"<td>{text}</td>"


def _table(rows: Sequence[Row], nfes: Sequence[int], metric: str) -> str:
    rows = [r for r in rows if not (metric == "rmse" and r.stochastic)]
    if not rows:
        return ""
    pick = max if metric == "coverage" else min
    best = {}
    for n in nfes:
        vals = [getattr(r, metric) for r in rows if r.nfe_asked == n and not math.isnan(getattr(r, metric))]
        best[n] = pick(vals) if vals else math.nan
    cell = {(r.solver, r.nfe_asked): r for r in rows}
    head = "".join(f"<th>NFE {n}</th>" for n in nfes)
    body = []
    for s in dict.fromkeys(r.solver for r in rows):
        first = cell[(s, nfes[0])]
        sto = first.stochastic
        tds = "".join(
            _cell(
                getattr(cell[(s, n)], metric), metric, getattr(cell[(s, n)], metric) == best[n], cell[(s, n)].nonfinite
            )
            for n in nfes
        )
        lib = html.escape(first.library)
        cls = "" if first.library == "fewstep" else " class='peer'"
        body.append(f"<tr{cls}><td>{lib}</td><th>{html.escape(s)}{' (stochastic)' if sto else ''}</th>{tds}</tr>")
    return (
        f"<h2>{html.escape(LABELS[metric])}</h2>\n<table>\n<tr><th>library</th><th>solver</th>{head}</tr>\n"
        + "\n".join(body)
        + "\n</table>\n<p class='note'>Bold: best in column. Shaded rows: peer libraries (diffusers, k-diffusion) "
        "on the same target, schedule, noise and NFE. nan!: the run raised or returned inf/NaN.</p>\n"
    )


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>\n'


def render_report(rows: Sequence[Row], nfes: Sequence[int], settings: dict[str, Any], images: Sequence[Path]) -> str:
    """The report as one HTML string (no external resources)."""
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in settings.items())
    parts = [
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n<title>fewstep compare report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child{text-align:left}"
        "img{max-width:100%}.note{color:#555;font-size:90%}tr.peer{background:#eef4ff}td.bad{color:#b00}</style>\n</head>\n<body>",
        "<h1>fewstep compare</h1>",
        f"<ul class='settings'>{items}</ul>",
    ]
    for metric in ("rmse", "sw2", "mmd", "coverage", "fd_digits"):
        if any(not math.isnan(getattr(r, metric)) for r in rows):
            parts.append(_table(rows, nfes, metric))
    parts.extend(_image(p, p.stem) for p in images if p.exists())
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def write_report(
    rows: Sequence[Row], nfes: Sequence[int], settings: dict[str, Any], images: Sequence[Path], path: Path
) -> None:
    """Write the report (atomically: a temporary file next to ``path``, then a rename)."""
    atomic_write_text(path, render_report(rows, nfes, settings, images))
