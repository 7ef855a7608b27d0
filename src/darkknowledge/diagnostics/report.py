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
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from darkknowledge.diagnostics._common import jsonable
from darkknowledge.diagnostics.plots import render_plots
from darkknowledge.diagnostics.result import DiagnosticsResult
from darkknowledge.diagnostics.tables import (
    STAT_COLUMNS,
    csv_tables,
    decomposition_rows,
    format_value,
    model_roles,
    summary_rows,
)
from darkknowledge.errors import UserError
from darkknowledge.fileio import atomic_write_bytes

__all__ = ["write_report"]


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
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in r) + "</tr>" for r in rows)
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


def _html(result: DiagnosticsResult, plots: dict[str, tuple[bytes, str]]) -> str:
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
    h, rows = summary_rows(result)
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
    cols = ["temperature", *STAT_COLUMNS]
    for role, s in model_roles(result):
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
                [
                    [k, g.intra_angle, g.inter_angle, g.num_samples, g.num_zero_features]
                    for k, g in result.geometry.items()
                ],
            )
        )
    if result.decompositions:
        parts.append("<h2>Loss decompositions (means, no T² factor)</h2>")
        h, rows = decomposition_rows(result)
        parts.append(_table(h, rows))
    parts.append(
        "<p class='sub'>Definitions: see <code>docs/diagnostics.md</code>. Data: <code>diagnostics.json</code> "
        "and the CSV files next to this page.</p></main></body></html>"
    )
    return "\n".join(parts)


MARKER_KEY = "darkknowledge_diagnostics"  # in diagnostics.json: the directory holds outputs this project wrote


def _written_by_us(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    legacy = isinstance(data, dict) and {"options", "teachers", "files"} <= set(data)
    return isinstance(data, dict) and (MARKER_KEY in data or legacy)


def check_report_dir(out_dir: str | os.PathLike[str]) -> None:
    """Refuse a directory that is a file, or that holds a diagnostics.json (or a report.html
    without one) this project did not write: nothing of a user's is replaced."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory")
    marker = out / "diagnostics.json"
    if marker.exists() and not _written_by_us(marker):
        raise UserError(
            f"{marker} was not written by darkknowledge diagnose; it is left as it is: choose another --out"
        )
    if not marker.exists() and (out / "report.html").exists():
        raise UserError(f"{out} holds a report.html that darkknowledge diagnose did not write; choose another --out")


def write_report(result: DiagnosticsResult, out_dir: str | os.PathLike[str], *, plots: bool = True) -> dict[str, str]:
    """Write all outputs for ``result`` into ``out_dir``; returns ``{kind: path}``."""
    check_report_dir(out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}

    def put(key: str, name: str, data: str | bytes) -> None:
        p = atomic_write_bytes(out / name, data if isinstance(data, bytes) else data.encode("utf-8"))
        files[key] = str(p)

    for key, (name, text) in csv_tables(result).items():
        put(key, name, text)
    if result.cards:
        put("cards_md", "cards.md", "\n\n".join(c.to_text() for c in result.cards))
    pngs = render_plots(result) if plots else {}
    for key, (png, _) in pngs.items():
        put(f"{key}_png", f"{key}.png", png)
    files["report_html"] = str(out / "report.html")
    files["diagnostics_json"] = str(out / "diagnostics.json")
    put("report_html", "report.html", _html(result, pngs))
    payload = {MARKER_KEY: 1, **result.to_dict()}
    payload["files"] = dict(files)
    put("diagnostics_json", "diagnostics.json", json.dumps(jsonable(payload), indent=1, allow_nan=False))
    return files
