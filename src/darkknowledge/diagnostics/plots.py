"""The diagnostics' plots as PNG bytes (matplotlib Agg, no pyplot state)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from darkknowledge.diagnostics.result import DiagnosticsResult
from darkknowledge.diagnostics.stats import TeacherStats
from darkknowledge.diagnostics.tables import model_roles


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    return fig


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _capacity_axis(stats: Sequence[TeacherStats]) -> tuple[list[float], str, bool]:
    if stats and all(s.num_params for s in stats):
        return [float(s.num_params) for s in stats], "parameters", True  # type: ignore[arg-type]
    return [float(i) for i in range(len(stats))], "teacher (given order)", False


def _ordered_teachers(result: DiagnosticsResult) -> list[TeacherStats]:
    ts = list(result.teachers)
    if ts and all(s.num_params for s in ts):
        ts.sort(key=lambda s: s.num_params)  # type: ignore[arg-type, return-value]
    return ts


def ladder_positions(xs: list[float], log_x: bool = True) -> tuple[list[int], list[tuple[int, float]]]:
    """Indices of the ladder (the first teacher of each size, joined by lines) and of the other
    teachers of an already-seen size (e.g. an early-stopped or re-trained variant), each with
    an x beside its ladder point, drawn unconnected."""
    if not log_x:
        return list(range(len(xs))), []
    seen: dict[float, int] = {}
    ladder, variants = [], []
    for i, x in enumerate(xs):
        if x in seen:
            seen[x] += 1
            variants.append((i, x * 1.06 ** seen[x]))
        else:
            seen[x] = 0
            ladder.append(i)
    return ladder, variants


def _plot_var_vs_capacity(result: DiagnosticsResult) -> bytes | None:
    ts = _ordered_teachers(result)
    if not ts:
        return None
    xs, xlabel, log_x = _capacity_axis(ts)
    ladder, variants = ladder_positions(xs, log_x)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, temp in enumerate(ts[0].temperatures):
        (line,) = ax.plot(
            [xs[j] for j in ladder],
            [ts[j].per_temperature[i]["nt_var"] for j in ladder],
            marker="o",
            label=f"T={temp:g}",
        )
        for j, x in variants:
            ax.plot([x], [ts[j].per_temperature[i]["nt_var"]], "x", color=line.get_color())
    if log_x:
        ax.set_xscale("log")
    else:
        ax.set_xticks(xs, [s.name for s in ts], rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean non-target variance (full softmax)")
    ax.set_title("Non-target variance vs teacher capacity")
    if log_x:
        for j, x in [(j, xs[j]) for j in ladder] + variants:
            ax.annotate(ts[j].name, (x, ts[j].per_temperature[0]["nt_var"]), fontsize=7, alpha=0.7,
                        xytext=(2, 4), textcoords="offset points")  # fmt: skip
        if variants:
            ax.set_xlim(min(xs) / 1.4, max(x for _, x in variants) * 1.6)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def _plot_var_vs_temperature(result: DiagnosticsResult) -> bytes | None:
    ms = model_roles(result)
    if not ms:
        return None
    fig = _figure(9.6, 4.0)
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    for role, s in ms:
        style = "-" if role == "teacher" else "--"
        ax1.plot(s.temperatures, s.curve("nt_var"), style, marker="o", label=s.name)
        ax2.plot(s.temperatures, s.curve("nt_std_renorm"), style, marker="o", label=s.name)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("temperature T")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("mean non-target variance (full softmax)")
    ax2.set_ylabel("mean non-target std (renormalised)")
    ax1.set_title("Derived variance vs temperature")
    ax2.set_title("Renormalised spread vs temperature")
    ax1.legend(fontsize=8)
    return _png(fig)


def _plot_rank_heatmap(result: DiagnosticsResult, metric: str = "spearman") -> bytes | None:
    r = result.ranks
    if r is None or metric not in r.matrices or len(r.names) < 2:
        return None
    import numpy as np

    mat = np.array(r.matrices[metric], dtype=float)
    k = len(r.names)
    fig = _figure(max(4.0, 0.6 * k + 2.5), max(3.5, 0.6 * k + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    lo = min(0.0, float(np.nanmin(mat))) if np.isfinite(mat).any() else 0.0
    im = ax.imshow(mat, vmin=lo, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(k), r.names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(k), r.names, fontsize=8)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                if math.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if mat[i, j] < (lo + 1) / 2 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"Non-target rank consistency ({metric})")
    return _png(fig)


def _plot_angles(result: DiagnosticsResult) -> bytes | None:
    ts = [s for s in _ordered_teachers(result) if s.name in result.geometry]
    if not ts:
        return None
    xs, xlabel, log_x = _capacity_axis(ts)
    ladder, variants = ladder_positions(xs, log_x)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for attr, marker, label in [("intra_angle", "o", "intra-class"), ("inter_angle", "s", "inter-class")]:
        (line,) = ax.plot(
            [xs[j] for j in ladder],
            [getattr(result.geometry[ts[j].name], attr) for j in ladder],
            marker=marker,
            label=label,
        )
        for j, x in variants:
            ax.plot([x], [getattr(result.geometry[ts[j].name], attr)], "x", color=line.get_color())
            ax.annotate(ts[j].name, (x, getattr(result.geometry[ts[j].name], attr)), fontsize=7, alpha=0.7,
                        xytext=(2, 4), textcoords="offset points")  # fmt: skip
    if log_x:
        ax.set_xscale("log")
    else:
        ax.set_xticks(xs, [s.name for s in ts], rotation=30, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("angle (degrees)")
    ax.set_title("Feature angles vs teacher capacity")
    ax.legend()
    ax.grid(True, alpha=0.3)
    return _png(fig)


def _plot_tau_hist(result: DiagnosticsResult) -> bytes | None:
    ms = [(role, s) for role, s in model_roles(result) if s.tau_star and s.tau_star.get("num_defined")]
    if not ms:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for role, s in ms:
        t = s.tau_star
        assert t is not None
        edges, counts = t["hist_edges"], t["hist_counts"]
        total = max(1, sum(counts))
        ax.stairs([c / total for c in counts], edges, label=f"{s.name} (median {t['median']:.2f})",
                  linestyle="-" if role == "teacher" else "--")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("tau* = argmax_tau Var_{c!=y}[softmax(z/tau)_c]")
    ax.set_ylabel("fraction of samples")
    ax.set_title("Per-instance variance-maximising temperature")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


# (file key, plot function, caption), in the order of the report
PLOTS = [
    (
        "nt_var_vs_capacity",
        _plot_var_vs_capacity,
        "Mean non-target variance vs teacher capacity, one line per temperature.",
    ),
    ("nt_var_vs_temperature", _plot_var_vs_temperature, "Non-target spread vs temperature (dashed: students)."),
    ("rank_spearman_heatmap", _plot_rank_heatmap, "Mean Spearman correlation of non-target rankings."),
    ("angles_vs_capacity", _plot_angles, "Intra- and inter-class feature angles vs capacity."),
    ("tau_star_hist", _plot_tau_hist, "Distribution of the per-instance variance-maximising temperature tau*."),
]


def render_plots(result: DiagnosticsResult) -> dict[str, tuple[bytes, str]]:
    """``{key: (png bytes, caption)}`` of the plots that ``result`` has data for."""
    pngs = {}
    for key, make, caption in PLOTS:
        png = make(result)
        if png is not None:
            pngs[key] = (png, caption)
    return pngs
