"""The benchmark's report: JSON-ready metrics, a text summary and a PNG of the curves."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.sim.metrics import Metrics, Report

RATES = ("control_success", "guided_success", "uplift", "coverage", "accuracy", "transfer",
         "retention")


def metrics_json(report: Report) -> dict[str, Any]:
    """compute()'s output with the spec's metric names as keys, per phase and overall."""
    return {
        "overall": asdict(report.overall),
        "phases": {m.scope: asdict(m) for m in report.phases},
    }


def fmt(value: float | None, percent: bool = False) -> str:
    """A metric as the reports print it: a rate to 3 places, uplift in percent."""
    if value is None:
        return "-"
    return f"{value:+.0%}" if percent else f"{value:.3f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rows(scopes: list[Metrics]) -> list[tuple[str, list[str]]]:
    rows = [(name, [fmt(getattr(m, name), name == "uplift") for m in scopes]) for name in RATES]
    keys = sorted({k for m in scopes for k in m.adaptation})
    rows += [(f"adaptation {k}", [fmt(m.adaptation.get(k)) for m in scopes]) for k in keys]
    rows += [
        ("hint_latency_ms p50", [_ms(m.hint_latency_ms.p50) for m in scopes]),
        ("hint_latency_ms p95", [_ms(m.hint_latency_ms.p95) for m in scopes]),
        ("retrain_seconds total", [f"{sum(m.retrain_seconds):.0f}" for m in scopes]),
        ("tasks", [str(m.tasks) for m in scopes]),
    ]
    return rows


def summary_table(report: Report) -> str:
    scopes = [*report.phases, report.overall]
    header = ["metric", *(m.scope for m in scopes)]
    rows = [header, *([name, *cells] for name, cells in _rows(scopes))]
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if c else cell.ljust(w)
                       for c, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    return "\n".join(lines)


def _values(scopes: tuple[Metrics, ...], name: str) -> list[float]:
    """None plots as NaN: a gap rather than a fake zero."""
    return [float("nan") if (v := getattr(m, name)) is None else float(v) for m in scopes]


def plot(report: Report, path: Path, title: str) -> None:
    """Success per phase for both arms; accuracy and coverage per phase."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    names = [m.scope for m in report.phases]
    x = list(range(len(names)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, label in (("control_success", "control"), ("guided_success", "guided")):
        left.plot(x, _values(report.phases, name), marker="o", label=label)
    left.set_title("success per phase")
    for name in ("accuracy", "coverage"):
        right.plot(x, _values(report.phases, name), marker="o", label=name)
    right.set_title("guided arm: accuracy and coverage")
    for axes in (left, right):
        axes.set_xticks(x, names)
        axes.set_ylim(0.0, 1.05)
        axes.grid(alpha=0.3)
        axes.legend()
    fig.suptitle(title)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
