"""Write a diagnostics run to a directory: JSON, CSV tables, PNG plots, one HTML page.

Files (all written atomically: temp file in the same directory, then ``os.replace``):

* ``diagnostics.json``        everything (``DiagnosticsResult.to_dict()``)
* ``model_summary.csv``       one row per model: accuracy, logit std, tau* summary, angles
* ``teacher_stats.csv``       one row per (model, temperature)
* ``tau_star_hist.csv``       tau* histogram bins per model
* ``rank_<metric>.csv``       pairwise matrices (spearman, kendall, top1, top5, top10)
* ``angles.csv``              intra/inter-class angles (if features were given)
* ``decompositions.csv``      ATS / DKD / AID terms per (teacher, student)
* ``cards.md``                teacher report cards
* ``*.png``                   plots (matplotlib Agg, no pyplot state)
* ``report.html``             self-contained page: tables, cards, plots as base64 data URIs
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from darkknowledge.diagnostics._common import jsonable
from darkknowledge.fileio import atomic_write_bytes, atomic_write_text
from darkknowledge.diagnostics.stats import PER_TEMPERATURE_KEYS

if TYPE_CHECKING:  # pragma: no cover
    from darkknowledge.diagnostics.api import DiagnosticsResult
    from darkknowledge.diagnostics.stats import TeacherStats

__all__ = ["write_report", "atomic_write_bytes", "atomic_write_text"]

# the per-temperature statistics, in the order of the CSV columns
_STAT_COLUMNS = PER_TEMPERATURE_KEYS


# -- atomic writes ---------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else (_num(v) if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


def _num(x: float) -> str:
    return "nan" if not math.isfinite(x) else repr(float(x))


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(x)


# -- tables ----------------------------------------------------------------------------------
def _models(result: "DiagnosticsResult") -> list[tuple[str, "TeacherStats"]]:
    return [("teacher", s) for s in result.teachers] + [("student", s) for s in result.students]


def _summary_rows(result: "DiagnosticsResult") -> tuple[list[str], list[list[Any]]]:
    header = [
        "model", "role", "num_params", "num_samples", "num_classes", "top1", "top5", "logit_std",
        "tau_star_mean", "tau_star_median", "tau_star_q05", "tau_star_q95", "tau_star_frac_at_min",
        "tau_star_frac_at_max", "tau_star_undefined", "intra_angle_deg", "inter_angle_deg",
    ]  # fmt: skip
    rows = []
    for role, s in _models(result):
        t = s.tau_star or {}
        g = result.geometry.get(s.name)
        rows.append(
            [
                s.name, role, s.num_params, s.num_samples, s.num_classes, s.top1, s.top5, s.logit_std,
                t.get("mean"), t.get("median"), t.get("q05"), t.get("q95"), t.get("frac_at_min"),
                t.get("frac_at_max"), t.get("num_undefined"),
                g.intra_angle if g else None, g.inter_angle if g else None,
            ]  # fmt: skip
        )
    return header, rows


def _stats_rows(result: "DiagnosticsResult") -> tuple[list[str], list[list[Any]]]:
    header = ["model", "role", "num_params", "temperature", *_STAT_COLUMNS]
    rows = []
    for role, s in _models(result):
        for r in s.per_temperature:
            rows.append([s.name, role, s.num_params, r["temperature"], *[r[k] for k in _STAT_COLUMNS]])
    return header, rows


def _decomp_rows(result: "DiagnosticsResult") -> tuple[list[str], list[list[Any]]]:
    header = [
        "teacher", "student", "temperature", "student_temperature_ats", "num_samples",
        "ats_correct_guidance", "ats_smoothing", "ats_discriminability", "ats_soft_ce",
        "dkd_tckd", "dkd_nckd", "dkd_weight", "dkd_weighted_nckd", "dkd_kd",
        "aid_inter", "aid_intra", "aid_kd", "aid_batch_size",
    ]  # fmt: skip
    rows = []
    for d in result.decompositions:
        rows.append(
            [
                d.teacher, d.student, d.temperature, d.student_temperature, d.num_samples,
                d.ats["correct_guidance"], d.ats["smoothing"], d.ats["discriminability"], d.ats["soft_ce"],
                d.dkd["tckd"], d.dkd["nckd"], d.dkd["weight"], d.dkd["weighted_nckd"], d.dkd["kd"],
                d.aid["inter"], d.aid["intra"], d.aid["kd"], d.aid_batch_size,
            ]  # fmt: skip
        )
    return header, rows


# -- plots -----------------------------------------------------------------------------------
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


def _capacity_axis(stats: Sequence["TeacherStats"]) -> tuple[list[float], str, bool]:
    if stats and all(s.num_params for s in stats):
        return [float(s.num_params) for s in stats], "parameters", True  # type: ignore[arg-type]
    return [float(i) for i in range(len(stats))], "teacher (given order)", False


def _ordered_teachers(result: "DiagnosticsResult") -> list["TeacherStats"]:
    ts = list(result.teachers)
    if ts and all(s.num_params for s in ts):
        ts.sort(key=lambda s: s.num_params)  # type: ignore[arg-type, return-value]
    return ts


def _plot_var_vs_capacity(result: "DiagnosticsResult") -> bytes | None:
    ts = _ordered_teachers(result)
    if not ts:
        return None
    xs, xlabel, log_x = _capacity_axis(ts)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, temp in enumerate(ts[0].temperatures):
        ax.plot(xs, [s.per_temperature[i]["nt_var"] for s in ts], marker="o", label=f"T={temp:g}")
    if log_x:
        ax.set_xscale("log")
    else:
        ax.set_xticks(xs, [s.name for s in ts], rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean non-target variance (full softmax)")
    ax.set_title("Non-target variance vs teacher capacity")
    if log_x:
        for x, s in zip(xs, ts):
            ax.annotate(s.name, (x, s.per_temperature[0]["nt_var"]), fontsize=7, alpha=0.7,
                        xytext=(2, 4), textcoords="offset points")  # fmt: skip
    ax.legend(fontsize=8, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def _plot_var_vs_temperature(result: "DiagnosticsResult") -> bytes | None:
    ms = _models(result)
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


def _plot_rank_heatmap(result: "DiagnosticsResult", metric: str = "spearman") -> bytes | None:
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


def _plot_angles(result: "DiagnosticsResult") -> bytes | None:
    ts = [s for s in _ordered_teachers(result) if s.name in result.geometry]
    if not ts:
        return None
    xs, xlabel, log_x = _capacity_axis(ts)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xs, [result.geometry[s.name].intra_angle for s in ts], marker="o", label="intra-class")
    ax.plot(xs, [result.geometry[s.name].inter_angle for s in ts], marker="s", label="inter-class")
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


def _plot_tau_hist(result: "DiagnosticsResult") -> bytes | None:
    ms = [(role, s) for role, s in _models(result) if s.tau_star and s.tau_star.get("num_defined")]
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


# -- html ------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0;background:#f6f7f9;color:#1d2330;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.25em;margin-top:2em;border-bottom:2px solid #dde1e8;padding-bottom:.2em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
.sub{color:#5b6475;margin-top:0}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.06)}
th,td{padding:4px 9px;border:1px solid #e2e5eb;text-align:right;white-space:nowrap}
th{background:#eef1f6;font-weight:600}td:first-child,th:first-child{text-align:left}
.scroll{overflow-x:auto}
figure{margin:1em 0;background:#fff;padding:10px;box-shadow:0 1px 2px rgba(0,0,0,.06);display:inline-block;max-width:100%}
figure img{max-width:100%;height:auto}figcaption{font-size:.85em;color:#5b6475;margin-top:4px}
.card{background:#fff;border-left:5px solid #4a7bd0;padding:12px 18px;margin:1em 0;box-shadow:0 1px 2px rgba(0,0,0,.06)}
.card.mismatch{border-left-color:#d0694a}.card h3{margin-top:.2em}
.card ul{margin:.3em 0 .6em 1.2em;padding:0}.disclaimer{font-size:.85em;color:#7a5b00;background:#fff8e1;padding:6px 10px;border-radius:4px}
code{background:#eef1f6;padding:1px 4px;border-radius:3px}
.warnings{background:#fdecea;border-left:5px solid #c0392b;padding:6px 14px;margin:1em 0}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _img(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def data_text(data: dict[str, Any]) -> str:
    """One sentence saying what the outputs were computed on (``DiagnosticsResult.data``)."""
    if not data:
        return "Data: not recorded."
    n = data.get("num_samples")
    count = f"{n:,} samples" if isinstance(n, int) else "samples"
    if "dataset" not in data:
        source = f" from {data['logits_file']}" if data.get("logits_file") else ""
        return f"Data: {count} of precomputed logits{source}."
    parts = [f"{data['dataset']}, {data.get('split', '?')} split, {count}"]
    shape = data.get("image_shape")
    if shape:
        size = f"{shape[-2]}x{shape[-1]}"
        parts.append(f"images {size}" + (" (resized)" if data.get("image_size") else " (native size)"))
    per_class = data.get("per_class")
    parts.append(f"subset: at most {per_class} per class" if per_class else "no per-class subset")
    if data.get("classes"):
        parts.append(f"classes {data['classes']}")
    return "Data: " + "; ".join(parts) + "."


def _html(result: "DiagnosticsResult", plots: dict[str, tuple[bytes, str]]) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>darkknowledge diagnostics</title><style>{_CSS}</style></head><body><main>",
        "<h1>darkknowledge diagnostics</h1>",
    ]
    n = result.teachers[0].num_samples if result.teachers else 0
    c = result.teachers[0].num_classes if result.teachers else 0
    parts.append(
        f"<p class='sub'>{len(result.teachers)} teacher(s), {len(result.students)} student(s), "
        f"{n:,} samples, {c} classes; temperatures {', '.join(f'{t:g}' for t in result.options.temperatures)}.</p>"
    )
    parts.append(f"<p class='sub data'>{html.escape(data_text(result.data))}</p>")
    if result.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
        parts.append(f"<div class='warnings'><b>Warnings</b><ul>{items}</ul></div>")
    h, rows = _summary_rows(result)
    parts += ["<h2>Models</h2>", _table(h, rows)]
    if result.cards:
        parts.append("<h2>Teacher report cards</h2>")
        for card in result.cards:
            cls = "card mismatch" if card.mismatch else "card"
            ev = "".join(f"<li>{html.escape(e)}</li>" for e in card.evidence)
            alt = "".join(f"<li>{html.escape(a)}</li>" for a in card.alternatives)
            parts.append(
                f"<div class='{cls}'><h3>{html.escape(card.title)}</h3>"
                f"<p><b>Verdict.</b> {html.escape(card.verdict)}</p><b>Evidence</b><ul>{ev}</ul>"
                f"<p><b>Recommendation.</b> {html.escape(card.recommendation)}</p>"
                + (f"<b>Alternatives</b><ul>{alt}</ul>" if alt else "")
                + f"<p class='disclaimer'>{html.escape(card.disclaimer)}</p></div>"
            )
    if plots:
        parts.append("<h2>Plots</h2>")
        for png, caption in plots.values():
            parts.append(_img(png, caption))
    parts.append("<h2>Statistics vs temperature</h2>")
    cols = ["temperature", *_STAT_COLUMNS]
    for role, s in _models(result):
        parts.append(f"<h3>{html.escape(s.name)} <small>({role})</small></h3>")
        parts.append(_table(cols, [[r[k] for k in cols] for r in s.per_temperature]))
    if result.ranks is not None and len(result.ranks.names) >= 2:
        parts.append("<h2>Rank consistency (non-target classes)</h2>")
        for metric, mat in result.ranks.matrices.items():
            parts.append(f"<h3>{html.escape(metric)}</h3>")
            parts.append(_table(["", *result.ranks.names], [[nm, *row] for nm, row in zip(result.ranks.names, mat)]))
    if result.geometry:
        parts.append("<h2>Feature angles</h2>")
        parts.append(
            _table(
                ["model", "intra-class angle (deg)", "inter-class angle (deg)", "samples", "zero features"],
                [[k, g.intra_angle, g.inter_angle, g.num_samples, g.num_zero_features] for k, g in result.geometry.items()],
            )
        )
    if result.decompositions:
        parts.append("<h2>Loss decompositions (means, no T² factor)</h2>")
        h, rows = _decomp_rows(result)
        parts.append(_table(h, rows))
    parts.append(
        "<p class='sub'>Definitions: see <code>docs/diagnostics.md</code>. Data: <code>diagnostics.json</code> "
        "and the CSV files next to this page.</p></main></body></html>"
    )
    return "\n".join(parts)


# -- entry point -----------------------------------------------------------------------------
def write_report(result: "DiagnosticsResult", out_dir: str | os.PathLike[str], *, plots: bool = True) -> dict[str, str]:
    """Write all outputs for ``result`` into ``out_dir``; returns ``{kind: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}

    def put(key: str, name: str, data: str | bytes) -> None:
        p = atomic_write_bytes(out / name, data if isinstance(data, bytes) else data.encode("utf-8"))
        files[key] = str(p)

    h, rows = _summary_rows(result)
    put("model_summary_csv", "model_summary.csv", _csv_text(h, rows))
    h, rows = _stats_rows(result)
    put("teacher_stats_csv", "teacher_stats.csv", _csv_text(h, rows))
    hist_rows = []
    for _, s in _models(result):
        if s.tau_star:
            e, cnt = s.tau_star["hist_edges"], s.tau_star["hist_counts"]
            hist_rows += [[s.name, e[i], e[i + 1], cnt[i]] for i in range(len(cnt))]
    if hist_rows:
        put("tau_star_hist_csv", "tau_star_hist.csv", _csv_text(["model", "bin_low", "bin_high", "count"], hist_rows))
    if result.ranks is not None:
        for metric, mat in result.ranks.matrices.items():
            put(f"rank_{metric}_csv", f"rank_{metric}.csv", _csv_text(["model", *result.ranks.names],
                [[nm, *row] for nm, row in zip(result.ranks.names, mat)]))  # fmt: skip
    if result.geometry:
        params = {s.name: s.num_params for _, s in _models(result)}
        put("angles_csv", "angles.csv", _csv_text(
            ["model", "num_params", "intra_angle_deg", "inter_angle_deg", "num_samples", "num_zero_features"],
            [[k, params.get(k), g.intra_angle, g.inter_angle, g.num_samples, g.num_zero_features]
             for k, g in result.geometry.items()]))  # fmt: skip
    if result.decompositions:
        h, rows = _decomp_rows(result)
        put("decompositions_csv", "decompositions.csv", _csv_text(h, rows))
    if result.cards:
        put("cards_md", "cards.md", "\n\n".join(c.to_text() for c in result.cards))

    pngs: dict[str, tuple[bytes, str]] = {}
    if plots:
        makers = [
            ("nt_var_vs_capacity", _plot_var_vs_capacity, "Mean non-target variance vs teacher capacity, one line per temperature."),
            ("nt_var_vs_temperature", _plot_var_vs_temperature, "Non-target spread vs temperature (dashed: students)."),
            ("rank_spearman_heatmap", _plot_rank_heatmap, "Mean Spearman correlation of non-target rankings."),
            ("angles_vs_capacity", _plot_angles, "Intra- and inter-class feature angles vs capacity."),
            ("tau_star_hist", _plot_tau_hist, "Distribution of the per-instance variance-maximising temperature tau*."),
        ]
        for key, fn, caption in makers:
            png = fn(result)
            if png is not None:
                put(f"{key}_png", f"{key}.png", png)
                pngs[key] = (png, caption)
    files["report_html"] = str(out / "report.html")
    files["diagnostics_json"] = str(out / "diagnostics.json")
    put("report_html", "report.html", _html(result, pngs))
    payload = result.to_dict()
    payload["files"] = dict(files)
    put("diagnostics_json", "diagnostics.json", json.dumps(jsonable(payload), indent=1, allow_nan=False))
    return files
