"""A self-contained HTML report of a ``fewstep compare`` run: a summary of the best per NFE first, then the plots
(PNGs as data URIs), the tables and the settings."""

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


#: Bold marks the best cell of a column only when at most this many rows share its value (else it says nothing).
MAX_TIED_BOLD = 3


def _fmt(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric == "coverage" else f"{value:.2e}"


def _spent(row: Row) -> str:
    """`` (k)`` when the row spent k evaluations instead of the NFE asked (a solver that cannot spend it exactly)."""
    return f" ({row.nfe})" if row.nfe is not None and row.nfe != row.nfe_asked else ""


def _cell(row: Row, metric: str, best: bool) -> str:
    if row.nonfinite:
        return "<td class='bad'>nan!</td>"
    value = getattr(row, metric)
    if math.isnan(value):
        return "<td>-</td>"
    text = _fmt(value, metric) + _spent(row)
    return f"<td><b>{text}</b></td>" if best else f"<td>{text}</td>"


def _best(rows: Sequence[Row], metric: str) -> Row | None:
    """The row with the best finite ``metric`` (the largest coverage, else the smallest), or None."""
    ok = [r for r in rows if not r.nonfinite and not math.isnan(getattr(r, metric))]
    if not ok:
        return None
    return max(ok, key=lambda r: r.coverage) if metric == "coverage" else min(ok, key=lambda r: getattr(r, metric))


def _table(rows: Sequence[Row], nfes: Sequence[int], metric: str, peers: bool) -> str:
    rows = [r for r in rows if not (metric == "rmse" and r.stochastic)]
    if not rows:
        return ""
    bold: set[tuple[str, int]] = set()
    for n in nfes:
        column = [r for r in rows if r.nfe_asked == n]
        best = _best(column, metric)
        if best is not None:
            winners = [r for r in column if getattr(r, metric) == getattr(best, metric)]
            if len(winners) <= MAX_TIED_BOLD:
                bold.update((r.solver, n) for r in winners)
    cell = {(r.solver, r.nfe_asked): r for r in rows}
    head = "".join(f"<th>NFE {n}</th>" for n in nfes)
    body = []
    for s in dict.fromkeys(r.solver for r in rows):
        first = cell[(s, nfes[0])]
        tds = "".join(_cell(cell[(s, n)], metric, (s, n) in bold) for n in nfes)
        lib = html.escape(first.library)
        cls = "" if first.library == "fewstep" else " class='peer'"
        sto = " (stochastic)" if first.stochastic else ""
        body.append(f"<tr{cls}><td>{lib}</td><th>{html.escape(s)}{sto}</th>{tds}</tr>")
    notes = [
        f"Bold: the best in its column (none when more than {MAX_TIED_BOLD} rows tie).",
        "(k): the solver spent k evaluations, the largest number it can spend that is at most the NFE asked.",
        "nan!: the run raised or returned inf/NaN.",
    ]
    if peers:
        notes.append("Shaded rows: peer libraries on the same target, schedule, noise and NFE.")
    return (
        f"<h2>{html.escape(LABELS[metric])}</h2>\n<table>\n<tr><th>library</th><th>solver</th>{head}</tr>\n"
        + "\n".join(body)
        + f"\n</table>\n<p class='note'>{' '.join(notes)}</p>\n"
    )


def _summary(rows: Sequence[Row], nfes: Sequence[int]) -> str:
    """Per NFE: the best fewstep solver and the best peer (by RMSE against the exact solution for the ODE solvers;
    by sliced W2 for the stochastic ones), their ratio, and what to use."""
    lines = []
    for metric, stochastic in (("rmse", False), ("sw2", True)):
        kept = [r for r in rows if r.stochastic == stochastic]
        if not any(not math.isnan(getattr(r, metric)) for r in kept):
            continue
        kind = "ODE solvers, RMSE against the exact solution" if metric == "rmse" else "stochastic, sliced W2"
        for n in nfes:
            ours = _best([r for r in kept if r.nfe_asked == n and r.library == "fewstep"], metric)
            peer = _best([r for r in kept if r.nfe_asked == n and r.library != "fewstep"], metric)
            if ours is None:
                continue
            value = getattr(ours, metric)
            ours_text = f"<b>{html.escape(ours.solver)}</b> {_fmt(value, metric)}{_spent(ours)}"
            if peer is None:
                peer_text, ratio, use = "-", "-", ours.solver
            else:
                pv = getattr(peer, metric)
                name = peer.solver if peer.solver.startswith(f"{peer.library}:") else f"{peer.library} {peer.solver}"
                peer_text = f"{html.escape(name)} {_fmt(pv, metric)}{_spent(peer)}"
                ratio = f"{value / pv:.2f}" if pv > 0 else "-"
                use = ours.solver if value <= pv else name
            lines.append(
                f"<tr><td>{kind}</td><td>{n}</td><td>{ours_text}</td><td>{peer_text}</td><td>{ratio}</td>"
                f"<td>{html.escape(use)}</td></tr>"
            )
    return (
        "<h2 id='summary'>Summary: the best per NFE</h2>\n<table class='summary'>\n<tr><th>solvers, metric</th>"
        "<th>NFE</th><th>best fewstep</th><th>best peer</th><th>fewstep / peer</th><th>use</th></tr>\n"
        + "\n".join(lines)
        + "\n</table>\n<p class='note'>Lower is better; (k): k evaluations spent. The full tables follow the plots."
        "</p>\n"
    )


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>\n'


def _settings(settings: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, list | tuple):
            return ", ".join(map(str, value)) if value else "none"
        return str(value)

    items = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(show(v))}</td></tr>" for k, v in settings.items())
    return f"<h2>Settings</h2>\n<table class='settings'>{items}</table>\n"


def render_report(rows: Sequence[Row], nfes: Sequence[int], settings: dict[str, Any], images: Sequence[Path]) -> str:
    """The report as one HTML string (no external resources): the summary, the plots, the tables, the settings."""
    peers = any(r.library != "fewstep" for r in rows)
    title = ", ".join(f"{k} {settings[k]}" for k in ("target", "schedule", "spacing") if k in settings)
    parts = [
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n<title>fewstep compare report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child{text-align:left}"
        "img{max-width:100%}.note{color:#555;font-size:90%}tr.peer{background:#eef4ff}td.bad{color:#b00}"
        "table.summary td{text-align:left}</style>\n</head>\n<body>",
        f"<h1>fewstep compare: {html.escape(title)}</h1>",
        _summary(rows, nfes),
    ]
    parts.extend(_image(p, p.stem) for p in images if p.exists())
    for metric in ("rmse", "sw2", "mmd", "coverage", "fd_digits", "seconds"):
        if any(not math.isnan(getattr(r, metric)) for r in rows):
            parts.append(_table(rows, nfes, metric, peers))
    parts.append(_settings(settings))
    parts.append("</body>\n</html>\n")
    page = "\n".join(parts)
    if "model" in settings:  # fewstep compare --model: the reference is a teacher solve of the user's network
        page = page.replace("against the exact solution", "against the teacher solve")
    return page


def write_report(
    rows: Sequence[Row], nfes: Sequence[int], settings: dict[str, Any], images: Sequence[Path], path: Path
) -> None:
    """Write the report (atomically: a temporary file next to ``path``, then a rename)."""
    atomic_write_text(path, render_report(rows, nfes, settings, images))
