"""The view-keyed soft-label cache on real teachers and images: what top-k truncation
costs, what a cache weighs and how long it takes to build.

1. Builds a view cache of the 1,000 ``imagenet_sample`` images with EfficientNet-Lite0
   (K = ``--views`` views per image, view 0 the evaluation view, top-``max(ks)`` float16
   values) and times it: images/s, views/s, bytes per image, projected to ImageNet
   (1,281,167 images) for each k and K.
2. For EfficientNet-Lite0/1/2, on ``--kl-views`` views of each image (the views stored in
   that cache, decoded at each model's resolution as the streaming loader replays them),
   compares the full teacher distribution with the cache's reconstruction
   (:func:`darkknowledge.engine.cache.expand_topk`: top-k exact, the rest uniform) for
   k = 5 ... 100: KL(full || reconstruction) at T = 1 and T = 4 (mean, 95th percentile),
   the top-k probability mass, and the non-target variance and tau* of the
   reconstruction against those of the full logits (why the cache stores them).

Writes ``OUT/view_cache_topk.json`` and ``.csv``. Needs ``make install-imagenet``; heavy::

    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/view_cache_topk.py
    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/view_cache_topk.py --build-only   # the timing alone
    .venv/bin/python benchmarks/view_cache_topk.py --limit 40 --out /tmp/vc   # quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from darkknowledge.data.loader import Batch
from darkknowledge.data.views import apply_view
from darkknowledge.engine.cache import expand_topk
from darkknowledge.engine.foreign_teacher import efficientnet_lite_teacher
from darkknowledge.engine.precision import cpu_has_native_bf16, resolve_precision
from darkknowledge.engine.view_cache import (
    PathSource,
    ViewCachedTeacher,
    build_view_cache,
    cache_bytes_per_image,
    nontarget_statistics,
)
from darkknowledge.models.efficientnet_lite import MEAN, STD, VARIANTS, pretrained_efficientnet_lite
from imagenet_teachers import DATA, ROOT, normalise, sample_files

IMAGENET_TRAIN = 1_281_167
KS = (5, 10, 20, 50, 100)


def replay_pixels(files: list[Path], table: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N * V, 3, size, size): every view of ``table`` (N, V, 5), decoded per view with
    ``apply_view`` (JPEG draft at that view's own scale) as the streaming loader does."""
    n, v = table.shape[:2]
    out = torch.empty((n * v, 3, size, size), dtype=torch.uint8)
    for i, f in enumerate(files):
        for j in range(v):
            with Image.open(f) as im:
                out[i * v + j] = torch.from_numpy(np.array(apply_view(im, table[i, j], (size, size)))).permute(2, 0, 1)
    return out


@torch.inference_mode()
def teacher_logits(name: str, pixels: torch.Tensor, batch: int = 50) -> torch.Tensor:
    teacher = efficientnet_lite_teacher(name, data_mean=MEAN, data_std=STD, precision="auto")
    out = []
    for s in range(0, len(pixels), batch):
        x = normalise(pixels[s : s + batch]).contiguous(memory_format=torch.channels_last)
        rows = torch.arange(x.shape[0])
        out.append(teacher(Batch(images=x, targets=rows, indices=rows)))
    return torch.cat(out)


def kl_rows(full: torch.Tensor, approx: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = F.log_softmax(full / temperature, 1)
    return (log_p.exp() * (log_p - F.log_softmax(approx / temperature, 1))).sum(1)


def truncation_rows(name: str, full: torch.Tensor, targets: torch.Tensor) -> list[dict]:
    """One row per k: the reconstruction's error against the full logits ``full`` (M, C)."""
    lse = torch.logsumexp(full, 1)
    log_var_full, tau_full = nontarget_statistics(full, targets, (1.0, 4.0))
    rows = []
    for k in KS:
        values, ids = full.topk(k, dim=1)
        values = values.half().float()  # stored as float16
        rec = expand_topk(values, ids, lse, full.shape[1])
        kl1, kl4 = kl_rows(full, rec, 1.0), kl_rows(full, rec, 4.0)
        log_var_rec, tau_rec = nontarget_statistics(rec, targets, (1.0, 4.0))
        var_ratio = (log_var_rec - log_var_full).exp()
        defined = torch.isfinite(tau_full) & torch.isfinite(tau_rec)
        tau_ratio = tau_rec[defined] / tau_full[defined]
        rows.append(
            {
                "model": name,
                "k": k,
                "views": int(full.shape[0]),
                "topk_mass_mean": float((values - lse[:, None]).exp().sum(1).mean()),
                "kl_t1_mean": float(kl1.mean()),
                "kl_t1_p95": float(kl1.quantile(0.95)),
                "kl_t4_mean": float(kl4.mean()),
                "kl_t4_p95": float(kl4.quantile(0.95)),
                "nt_var_ratio_t1_median": float(var_ratio[:, 0].median()),
                "nt_var_ratio_t4_median": float(var_ratio[:, 1].median()),
                "tau_star_ratio_median": float(tau_ratio.median()) if tau_ratio.numel() else float("nan"),
                "tau_star_ratio_p05": float(tau_ratio.quantile(0.05)) if tau_ratio.numel() else float("nan"),
                "tau_star_ratio_p95": float(tau_ratio.quantile(0.95)) if tau_ratio.numel() else float("nan"),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    files, labels = sample_files(Path(args.data), args.limit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = PathSource(files, labels)
    build_model = "efficientnet_lite0"
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        cache_dir = Path(tmp) / "cache"
        model = pretrained_efficientnet_lite(build_model)
        load_before = os.getloadavg()[0]
        meta = build_view_cache(
            model,
            source,
            cache_dir,
            mean=MEAN,
            std=STD,
            image_size=VARIANTS[build_model].resolution,
            num_views=args.views,
            topk=max(KS),
            dtype="float16",
            batch_size=args.batch,
            precision="auto",
        )
        load_after = os.getloadavg()[0]
        shard_bytes = sum(f.stat().st_size for f in cache_dir.glob("shard-*/*.npy"))
        total_bytes = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
        t0 = time.perf_counter()
        cache = ViewCachedTeacher(cache_dir, source=source, teacher=model, verify=True)
        open_s = time.perf_counter() - t0
        table = cache.replay_views()[:, : args.kl_views]
        cached_values, cached_ids, cached_lse = cache.topk(
            torch.arange(len(files)).repeat_interleave(args.kl_views), torch.arange(args.kl_views).repeat(len(files))
        )
    build_s = float(meta["build_seconds"])
    n = len(files)
    build = {
        "teacher": build_model,
        "images": n,
        "views_per_image": args.views,
        "topk": max(KS),
        "dtype": "float16",
        "precision": resolve_precision("auto", "cpu"),
        "build_seconds": build_s,
        "images_per_s": n / build_s,
        "views_per_s": n * args.views / build_s,
        "bytes_per_image_measured": shard_bytes / n,
        "bytes_total_with_meta": total_bytes,
        "open_and_verify_seconds": open_s,
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": load_after,
        "projected_imagenet_build_hours": IMAGENET_TRAIN / (n / build_s) / 3600,
        "projected_imagenet_gb": {
            f"K{k_views}_top{k}": cache_bytes_per_image(k_views, k, "float16") * IMAGENET_TRAIN / 1e9
            for k_views in (4, 16, 64)
            for k in KS
        },
    }
    print(json.dumps(build), flush=True)
    if args.build_only:
        payload = {
            "build": build,
            "threads": args.threads,
            "command": f"benchmarks/view_cache_topk.py --build-only "
            f"--views {args.views} --threads {args.threads}" + (f" --limit {args.limit}" if args.limit else ""),
        }
        (out / "view_cache_build.json").write_text(json.dumps(payload, indent=1) + "\n")
        return payload
    targets = torch.as_tensor(labels).repeat_interleave(args.kl_views)
    rows, replay = [], {}
    for name, variant in VARIANTS.items():
        pixels = replay_pixels(files, table, variant.resolution)
        full = teacher_logits(name, pixels)
        del pixels
        rows += truncation_rows(name, full, targets)
        if name == build_model:  # the cache's own entries against a fresh replay of the same views
            rec = expand_topk(cached_values, cached_ids, cached_lse, full.shape[1])
            replay = {
                "top1_agreement": float((rec.argmax(1) == full.argmax(1)).float().mean()),
                "kl_t1_mean_replay_vs_cache": float(kl_rows(full, rec, 1.0).mean()),
            }
    summary = {
        "build": build,
        "replay_vs_cache": replay,
        "truncation": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, native bf16: {cpu_has_native_bf16()}, "
        f"torch {torch.__version__}",
        "threads": args.threads,
        "command": f"benchmarks/view_cache_topk.py --views {args.views} --kl-views {args.kl_views} "
        f"--threads {args.threads}" + (f" --limit {args.limit}" if args.limit else ""),
    }
    (out / "view_cache_topk.json").write_text(json.dumps(summary, indent=1) + "\n")
    with open(out / "view_cache_topk.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA), help="the imagenet_sample folder")
    ap.add_argument("--out", default=str(ROOT / "docs" / "imagenet"))
    ap.add_argument("--tmp", default=None, help="where the cache is built (a temporary directory)")
    ap.add_argument("--views", type=int, default=4, help="K: views per image in the timed cache")
    ap.add_argument("--kl-views", type=int, default=2, help="views per image in the truncation table")
    ap.add_argument("--batch", type=int, default=64, help="views per teacher batch while building")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (quick check)")
    ap.add_argument("--build-only", action="store_true", help="only the timed build (OUT/view_cache_build.json)")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
