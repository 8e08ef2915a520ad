"""The demo's chart: preferences, latency and traffic over time, events marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional


def draw_chart(state: Any, path: Path) -> Path:
    """Draw the run in ``state`` to a PNG at ``path`` (folders created)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = state.rows
    t = [r["t"] for r in rows]
    fig, (ax_pref, ax_lat, ax_split) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    title = f"dualtrack demo — scenario {state.scenario.name} ({state.source} adaptation"
    title += f", {state.speed:.3g}x speed)" if abs(state.speed - 1) > 1e-9 else ")"
    fig.suptitle(title)

    ax_pref.plot(t, [r["preferences"]["global"]["local_bias"] for r in rows], label="local_bias", lw=2)
    for qc in state.scenario.class_names:
        ax_pref.plot(t, [r["preferences"]["by_class"].get(qc, {}).get("local_bias") for r in rows],
                     label=f"local_bias ({qc})", lw=1, alpha=0.7)
    ax_pref.plot(t, [min(r["preferences"]["global"]["parallel_threshold"], 1.0) for r in rows],
                 label="parallel_threshold", ls="--")
    ax_pref.set_ylabel("preference")
    ax_pref.set_ylim(-0.02, 1.05)
    ax_pref.legend(loc="upper right", fontsize=7, ncol=2)

    for track in ("local", "api"):
        ax_lat.plot(t, [_num(r["p95_seconds"].get(track)) for r in rows], label=f"p95 {track}")
    ax_lat.plot(t, [_num(r["p95_seconds"].get("request")) for r in rows], label="p95 end to end", ls=":")
    ax_lat.axhline(state.scenario.constraints.get("target_latency_ms", 2000) / 1000.0, color="grey", lw=0.8,
                   ls="--", label="latency target")
    ax_lat.set_ylabel("seconds")
    ax_lat.legend(loc="upper right", fontsize=7)

    bottoms = [0.0] * len(rows)
    for path_name in ("local", "api", "parallel"):
        share = [r["split"].get(path_name, 0.0) for r in rows]
        ax_split.bar(t, share, bottom=bottoms, width=_width(t), label=path_name, align="edge")
        bottoms = [b + s for b, s in zip(bottoms, share, strict=False)]
    ax_split.set_ylabel("traffic share")
    ax_split.set_xlabel("scenario time (s)")
    ax_split.legend(loc="upper right", fontsize=7)

    for event in state.events:
        for ax in (ax_pref, ax_lat, ax_split):
            ax.axvline(event["t"], color="red", lw=0.8, alpha=0.6)
        ax_pref.annotate(event["label"], (event["t"], 1.02), fontsize=7, rotation=12, color="red")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _num(value: Optional[float]) -> float:
    return float("nan") if value is None else value


def _width(t: List[float]) -> Any:
    return -(t[1] - t[0]) * 0.9 if len(t) > 1 else -1.0
