"""Scale benchmark of ``darkknowledge.diagnostics``: N x 1,000 logits, two teachers
(default N = 50,000; ImageNet's training set is ``--n 1281167``).

Generates two synthetic, realistically confident teachers (shared class-affinity
structure, so their non-target rankings agree partly; the larger one is more
confident) as float16 ``.npy`` files in a separate process, then, in this process,
streams them from memory-mapped files in chunks through:

* per-teacher statistics at 6 temperatures (accuracy, ECE, non-target mean/var/std,
  renormalised variance and entropy, logit std),
* the per-instance tau* search (ISATS),
* rank consistency between the two teachers (top-1/5/10 overlap, Spearman, Kendall
  tau-b on every row),

and reports wall time per component and the peak anonymous RSS of this process
(``RssAnon`` in /proc/self/status, sampled every 10 ms, includes the torch import; the
memory-mapped logits are file-backed pages the kernel can drop, so they count in the
plain peak RSS, ``ru_maxrss``, also reported, but not in the anonymous one). Goal at
ImageNet scale: < 3 minutes and < 2 GiB anonymous RSS on 2 cores.

    .venv/bin/python benchmarks/diagnose_scale.py                 # 50,000 x 1,000
    .venv/bin/python benchmarks/diagnose_scale.py --n 1281167     # ImageNet scale (5 GB of files)
    .venv/bin/python benchmarks/diagnose_scale.py --write-docs    # also update docs/diagnostics.md
    .venv/bin/python benchmarks/diagnose_scale.py --n 5000        # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def generate(out: Path, n: int, c: int, seed: int = 0, chunk: int = 5000) -> None:
    """Write targets.npy and teacher_{small,large}.npy (float16) to ``out``."""
    rng = np.random.default_rng(seed)
    d = 64
    emb = rng.standard_normal((c, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    targets = rng.integers(0, c, size=n).astype(np.int64)
    np.save(out / "targets.npy", targets)
    # (scale of the shared affinity, private noise, target margin mean, margin spread)
    specs = {"small": (6.0, 1.0, 7.0, 2.5), "large": (7.0, 0.8, 12.0, 3.0)}
    files = {
        k: np.lib.format.open_memmap(out / f"teacher_{k}.npy", mode="w+", dtype=np.float16, shape=(n, c)) for k in specs
    }
    for start in range(0, n, chunk):
        y = targets[start : start + chunk]
        b = y.shape[0]
        h = emb[y] + 0.45 * rng.standard_normal((b, d)).astype(np.float32)  # sample latent
        affinity = h @ emb.T  # (b, c) shared class structure
        for name, (scale, noise, margin, spread) in specs.items():
            z = scale * affinity + noise * rng.standard_normal((b, c)).astype(np.float32)
            z[np.arange(b), y] += margin + spread * rng.standard_normal(b).astype(np.float32)
            files[name][start : start + b] = z.astype(np.float16)
    for f in files.values():
        f.flush()
    del files


def peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def anon_rss_bytes() -> int:
    """Current anonymous RSS (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class AnonPeak:
    """Peak anonymous RSS, sampled by a background thread every ``interval`` seconds."""

    def __init__(self, interval: float = 0.01):
        self.peak = anon_rss_bytes()
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, anon_rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_rss_bytes())
        return self.peak


def run(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from darkknowledge.diagnostics import (
        DiagnoseOptions,
        DiagnosticsResult,
        RankConsistencyAccumulator,
        TeacherStatsAccumulator,
        optimal_nontarget_temperature,
        write_report,
    )
    from darkknowledge.diagnostics.api import _resolve_options
    from darkknowledge.diagnostics.parallel import worker_count
    from darkknowledge.diagnostics.stats import summarize_tau_star

    work = Path(args.workdir)
    rss_after_import = anon_rss_bytes()
    anon = AnonPeak()
    t0 = time.perf_counter()
    y_all = np.load(work / "targets.npy")
    logits = {k: np.load(work / f"teacher_{k}.npy", mmap_mode="r") for k in ("small", "large")}
    params = {"small": 1_000_000, "large": 20_000_000}
    opts = _resolve_options(None, DiagnoseOptions(chunk_size=args.chunk))
    workers = args.workers or None
    stats = {
        k: TeacherStatsAccumulator(opts.temperatures, name=k, num_params=params[k], tau_star=False, threads=workers)
        for k in logits
    }
    ranks = RankConsistencyAccumulator(list(logits), ks=opts.ks, kendall=True, threads=workers)
    timers = {"read": 0.0, "stats": 0.0, "tau_star": 0.0, "ranks": 0.0}
    n = len(y_all)
    # the tau* search is timed on its own (diagnose() runs it inside the stats accumulator)
    taus: dict[str, list[np.ndarray]] = {k: [] for k in logits}
    for start in range(0, n, args.chunk):
        t = time.perf_counter()
        sl = slice(start, start + args.chunk)
        y = torch.from_numpy(np.ascontiguousarray(y_all[sl]))
        z = {k: torch.from_numpy(np.array(v[sl])) for k, v in logits.items()}
        timers["read"] += time.perf_counter() - t
        t = time.perf_counter()
        for k in stats:
            stats[k].update(z[k], y)
        timers["stats"] += time.perf_counter() - t
        t = time.perf_counter()
        for k in logits:
            taus[k].append(optimal_nontarget_temperature(z[k], y, opts.tau_min, opts.tau_max, threads=workers).numpy())
        timers["tau_star"] += time.perf_counter() - t
        t = time.perf_counter()
        ranks.update([z[k] for k in logits], y)
        timers["ranks"] += time.perf_counter() - t
    teachers = []
    for k in stats:
        res = stats[k].result()
        res.tau_star_values = np.concatenate(taus[k])
        res.tau_star = summarize_tau_star(res.tau_star_values, opts.tau_min, opts.tau_max)
        teachers.append(res)
    result = DiagnosticsResult(teachers=teachers, ranks=ranks.result(), options=opts)
    result.cards = [result.card(k) for k in logits]
    compute_s = time.perf_counter() - t0
    t = time.perf_counter()
    out_dir = work / "report"
    write_report(result, out_dir)
    report_s = time.perf_counter() - t
    peak_anon = anon.stop()
    summary = {
        "n": n,
        "classes": int(logits["small"].shape[1]),
        "chunk": args.chunk,
        "torch_threads": torch.get_num_threads(),
        "workers": worker_count(workers),
        "compute_s": round(compute_s, 2),
        "breakdown_s": {k: round(v, 2) for k, v in timers.items()},
        "report_s": round(report_s, 2),
        "total_s": round(compute_s + report_s, 2),
        "peak_anon_rss_mib": round(peak_anon / 2**20, 1),
        "anon_rss_after_imports_mib": round(rss_after_import / 2**20, 1),
        "peak_rss_incl_mapped_files_mib": round(peak_rss_bytes() / 2**20, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, numpy {np.__version__}",
        "cpu": cpu_name(),
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "results": {
            t.name: {
                "top1": round(t.top1, 4),
                "target_prob_T1": round(t.at(1.0, "target_prob"), 4),
                "nt_var_T4": t.at(4.0, "nt_var"),
                "tau_star_median": round(t.tau_star["median"], 3) if t.tau_star else None,
            }
            for t in teachers
        },
        "spearman": round(result.ranks.value("spearman", "small", "large"), 4),
        "kendall": round(result.ranks.value("kendall", "small", "large"), 4),
        "top5": round(result.ranks.value("top5", "small", "large"), 4),
    }
    return summary


def cpu_name() -> str:
    """CPU model and whether it has AVX512-BF16 (Linux; else the platform's name)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = re.search(r"^model name\s*:\s*(.+)$", info, flags=re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, flags=re.M)
    bf16 = flags is not None and "avx512_bf16" in flags.group(1).split()
    return f"{model.group(1).strip() if model else platform.machine()}{' with AVX512-BF16' if bf16 else ''}"


def write_docs(summary: dict, cmd: str) -> None:
    doc = ROOT / "docs" / "diagnostics.md"
    text = doc.read_text() if doc.exists() else "# Diagnostics\n"
    b = summary["breakdown_s"]
    section = (
        "## At scale\n\n"
        "The accumulators read the logits in row chunks (memory-mapped `.npy`/`.npz` files are "
        "never loaded whole, and no N x C float64 array exists), keep only running sums and 4 bytes "
        "of tau* per sample and model, and use both cores: torch's intra-op threads for the "
        "statistics and tau*, a thread per block of rows for the rank statistics. "
        "`benchmarks/diagnose_scale.py` generates two synthetic teachers as float16 files and times "
        "each part; the anonymous RSS excludes the mapped files' page cache, which the kernel can "
        "drop (the plain RSS includes it and grows with the file size).\n\n"
        f"Command: `{cmd}`\n\n"
        f"Synthetic {summary['n']:,} x {summary['classes']:,} float16 logits for two teachers, memory-mapped, "
        f"chunks of {summary['chunk']} rows, {summary['workers']} worker thread(s) for row blocks, "
        f"{summary['torch_threads']} torch intra-op thread(s); {summary['cpu']}; "
        f"{summary['machine']}; 1-minute load average at the end {summary['load_avg_1min_at_end']} "
        "(the machine is shared with other jobs).\n\n"
        "| what | value |\n|---|---|\n"
        "| wall time, everything (stats at 6 temperatures + tau* + rank consistency, both teachers) "
        f"| **{summary['compute_s']} s** |\n"
        f"| of which: per-teacher statistics | {b['stats']} s |\n"
        f"| of which: tau* search | {b['tau_star']} s |\n"
        f"| of which: rank consistency (top-k, Spearman, Kendall tau-b on all rows) | {b['ranks']} s |\n"
        f"| of which: reading the memory-mapped chunks | {b['read']} s |\n"
        f"| writing the report (JSON, CSV, PNG, HTML) | {summary['report_s']} s |\n"
        "| peak anonymous RSS (whole process, incl. imports at "
        f"{summary['anon_rss_after_imports_mib']} MiB) | **{summary['peak_anon_rss_mib']} MiB** |\n"
        "| peak RSS including the mapped files' cached pages (the kernel reclaims these) "
        f"| {summary['peak_rss_incl_mapped_files_mib']} MiB |\n\n"
        f"Results: {json.dumps(summary['results'])}; between the teachers Spearman {summary['spearman']}, "
        f"Kendall tau-b {summary['kendall']}, top-5 overlap {summary['top5']}.\n"
    )
    pattern = r"^## (At scale|Scale)\b.*?(?=^## |\Z)"
    if re.search(pattern, text, flags=re.M | re.S):
        text = re.sub(pattern, lambda _: section + "\n", text, count=1, flags=re.M | re.S)
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--c", type=int, default=1_000)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument(
        "--workers", type=int, default=0, help="diagnostics worker threads for row blocks (0: torch's thread count)"
    )
    ap.add_argument("--workdir", default=None, help="where to write the synthetic files (default: a temp dir)")
    ap.add_argument(
        "--write-docs", action="store_true", help="write the numbers under '## At scale' in docs/diagnostics.md"
    )
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate_only:
        generate(Path(args.workdir), args.n, args.c)
        return
    if args.measure_only:
        print(json.dumps(run(args)))
        return
    with tempfile.TemporaryDirectory(prefix="dk_scale_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        base = [sys.executable, __file__, "--workdir", str(work), "--n", str(args.n), "--c", str(args.c)]
        t = time.perf_counter()
        subprocess.run([*base, "--generate-only"], check=True)
        gen_s = time.perf_counter() - t
        # measure in a fresh process so that peak RSS excludes data generation
        out = subprocess.run(
            [*base, "--chunk", str(args.chunk), "--threads", str(args.threads), "--workers", str(args.workers)]
            + ["--measure-only"],
            check=True,
            capture_output=True,
            text=True,
        )
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        summary["generate_s"] = round(gen_s, 1)
    print(json.dumps(summary, indent=1))
    if args.write_docs:
        argv = " ".join(a for a in sys.argv[1:] if a != "--write-docs")
        write_docs(summary, f".venv/bin/python benchmarks/diagnose_scale.py {argv}".strip())
        print("wrote docs/diagnostics.md (## At scale)")


if __name__ == "__main__":
    main()
