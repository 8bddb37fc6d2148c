"""Trend plots for reports (``--plot FILE.png``), with matplotlib as an optional extra.

People would rather look at a trend than read it, but a metering service must not pull a
plotting stack into every processor image: matplotlib is imported inside the functions and
a missing install is a clear :class:`ConfigError` naming the extra to install.
The Agg backend is forced so plots work on headless servers and in CI.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from migmeter.errors import ConfigError, MigmeterError

__all__ = ["INSTALL_HINT", "check_target", "plot_chargeback", "plot_utilization", "plot_trend"]

INSTALL_HINT = "plotting needs matplotlib: pip install 'migmeter[plot]'"
# Stacked bars stay readable up to about this many tenants; the rest are summed as "(other)".
MAX_SERIES = 12


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_target(out: Path) -> Path:
    """``out`` if a plot can be written there (its folder made if missing), else ConfigError:
    checked before the report runs, so a typo in ``--plot`` costs no query and no traceback."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--plot {str(out)!r} is a directory, not a file name")
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "ab"):  # the one true test (root passes every access() check; /proc does not take files)
            pass
    except OSError as exc:
        raise ConfigError(f"--plot: cannot write {str(out)!r}: {exc.strerror or exc}") from None
    if not existed:
        out.unlink(missing_ok=True)
    return out


def _save(fig: Any, plt: Any, out: Path) -> Path:
    out = check_target(out)
    try:
        fig.tight_layout()
        fig.savefig(out, dpi=110)
    except ValueError as exc:  # matplotlib: an extension it has no writer for
        raise ConfigError(f"--plot {str(out)!r}: {exc}") from None
    except OSError as exc:
        raise MigmeterError(f"cannot write the plot to {str(out)!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out


def plot_chargeback(
    days: Sequence[date | datetime], tenants: Sequence[str], gpu_hours: Sequence[float], out: Path, title: str
) -> Path:
    """Stacked daily bars of allocated GPU-hours per tenant (incl. unassigned/unallocated lines).

    The three sequences are parallel (one entry per (day, tenant) row); the largest
    ``MAX_SERIES`` tenants get their own colour, the rest are summed as "(other)".
    """
    plt = _pyplot()
    totals: dict[str, float] = defaultdict(float)
    for t, h in zip(tenants, gpu_hours):
        totals[t] += float(h or 0)
    keep = {t for t, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:MAX_SERIES]}
    by_day: dict[Any, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for d, t, h in zip(days, tenants, gpu_hours):
        by_day[d][t if t in keep else "(other)"] += float(h or 0)
    xs = sorted(by_day)
    series = sorted({t for v in by_day.values() for t in v}, key=lambda t: -totals.get(t, 0.0))
    fig, ax = plt.subplots(figsize=(10, 5))
    bottom = [0.0] * len(xs)
    labels = [x.strftime("%m-%d") if hasattr(x, "strftime") else str(x) for x in xs]
    for t in series:
        ys = [by_day[x].get(t, 0.0) for x in xs]
        ax.bar(labels, ys, bottom=bottom, label=t)
        bottom = [b + y for b, y in zip(bottom, ys)]
    ax.set_ylabel("GPU-hours (allocated)")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, plt, out)


def plot_utilization(
    buckets: Sequence[datetime], series: dict[str, Sequence[float | None]], out: Path, title: str
) -> Path:
    """Lines of utilization over time (simple mean, weighted, whole-GPU, allocation), values in % (0..100)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, values in series.items():
        ax.plot(list(buckets), [None if v is None else float(v) for v in values], label=name)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    return _save(fig, plt, out)


def plot_trend(
    rows: Sequence[tuple[str, date, str, float | None]], out: Path, title: str, ylabel: str = "GPU-hours (allocated)"
) -> Path:
    """One line per group over the periods; ``rows`` are (kind, period, group, value), forecast drawn dashed.

    The ``MAX_SERIES`` largest groups get a line each; the rest are left out (named in the legend title).
    """
    plt = _pyplot()
    totals: dict[str, float] = defaultdict(float)
    for kind, _, g, v in rows:
        if kind == "actual":
            totals[g] += float(v or 0)
    keep = [g for g, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:MAX_SERIES]]
    fig, ax = plt.subplots(figsize=(10, 5))
    for g in keep:
        actual = sorted((p, float(v)) for k, p, gg, v in rows if gg == g and k == "actual" and v is not None)
        ahead = sorted((p, float(v)) for k, p, gg, v in rows if gg == g and k == "forecast" and v is not None)
        (line,) = ax.plot([p for p, _ in actual], [v for _, v in actual], "-", label=g)
        if ahead:  # dashed, joined to the last actual point
            pts = actual[-1:] + ahead
            ax.plot([p for p, _ in pts], [v for _, v in pts], "--", color=line.get_color(), label=f"{g} (forecast)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    hidden = len(totals) - len(keep)
    ax.legend(fontsize="small", title=f"{hidden} smaller groups not drawn" if hidden > 0 else None)
    fig.autofmt_xdate()
    return _save(fig, plt, out)
