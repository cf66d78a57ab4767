"""``serve.py``'s plot: the delivery-time CDF, one panel per N, one line per server
(matplotlib, optional: without it there is no plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.report import log

__all__ = ["plot"]


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Delivery-time CDF per N, one line per server."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot (pip install -r bench/requirements.txt)")
        return False
    sizes = sorted({r["connections"] for r in results if r.get("cdf_ms")})
    if not sizes:
        return False
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.5), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for r in results:
            if r["connections"] != n or not r.get("cdf_ms"):
                continue
            values = r["cdf_ms"]
            fractions = [i / (len(values) - 1) for i in range(len(values))]
            ax.plot([max(v, 0.01) for v in values], fractions, label=r["server"])
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("delivery time, ms (publish request sent -> client has it)")
        ax.set_title(f"N = {n:,} clients, single broadcasts")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("share of (message, client) deliveries")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
