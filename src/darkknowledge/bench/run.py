"""The side-by-side benchmark behind ``darkknowledge bench``.

All phases run in one process on the same data (synthetic CIFAR-shaped uint8 images by
default, or a real dataset), with the same teacher/student pair and batch size:

(a) ``reference``  mdistiller-style loop (:mod:`darkknowledge.bench.reference`);
(b) ``live``       our trainer with the live teacher;  ``cached``: with a teacher cache;
(c) ``loss overhead``: the step time of every method relative to KD;
(d) ``student-only``: our trainer with CE only (the ceiling for a cached teacher);
(e) peak resident memory of each phase (this process; DataLoader workers excluded), and
    on CUDA the peak GPU memory allocated by torch;
(f) yardsticks that carry between machines: the device's matmul peak in fp32 and in the
    run's precision (:mod:`darkknowledge.bench.peak`), the FLOPs of a student training step
    and of a teacher forward (torch's flop counter), and from them each loop's achieved
    GFLOP/s as a fraction of the peak of the precision it computes in; the CPU's capability
    flags (or the GPU's name).

Each measurement is repeated and the median reported. Weights are random: speed does
not depend on them.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from darkknowledge.bench import rss
from darkknowledge.config import load_config
from darkknowledge.data.base import ArrayDataset, AugmentSpec, DataSpec
from darkknowledge.data.loader import Batch
from darkknowledge.data.splits import Splits
from darkknowledge.engine.cache import CachedTeacher, build_cache
from darkknowledge.engine.factory import build_parts
from darkknowledge.engine.teacher import LiveTeacher, TeacherSignal
from darkknowledge.engine.trainer import Trainer
from darkknowledge.models import build_model, count_parameters


class TensorTeacher(TeacherSignal):
    """Fixed teacher logits per sample, held in memory (isolates a loss's own cost)."""

    def __init__(self, logits: Tensor):
        self.table = logits
        self.num_classes = logits.shape[1]

    def __call__(self, batch: Batch) -> Tensor:
        return self.table[batch.indices]


def synthetic_dataset(n: int, num_classes: int, image_size: int = 32, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    targets = torch.arange(n) % num_classes
    spec = DataSpec(
        "synthetic",
        num_classes,
        3,
        (image_size, image_size),
        (0.5071, 0.4867, 0.4408),
        (0.2675, 0.2565, 0.2761),
        AugmentSpec(pad=4, flip=True),
    )
    return ArrayDataset(images, targets[torch.randperm(n, generator=g)], spec)


# ------------------------------------------------------------------------------ phases
def _trainer(
    student: str,
    method: dict[str, Any],
    ds: ArrayDataset,
    batch_size: int,
    teacher: TeacherSignal | None,
    precision: str,
    channels_last: bool,
    extra: list[str] | None = None,
    device: str = "cpu",
) -> Trainer:
    overrides = [
        f"engine.device={device}",
        f"model.name={student}",
        f"method.name={method['name']}",
        f"data.batch_size={batch_size}",
        f"engine.precision={precision}",
        f"engine.channels_last={str(channels_last).lower()}",
        "engine.progress=false",
        "optim.epochs=1000",
        "optim.schedule=constant",
    ] + [f"method.{k}={v}" for k, v in method.items() if k != "name"]
    cfg = load_config(overrides=overrides + list(extra or []))
    # the bench only calls train_epoch(); fit() (which writes the run dir) never runs
    parts = build_parts(cfg, splits=Splits(ds, None, ds), teacher=teacher)
    return Trainer(parts, run_dir=Path(tempfile.gettempdir()) / "dk-bench-unused")


def _median_rate(fn: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    rates = [fn() for _ in range(repeats)]
    return statistics.median(rates), rates


def _fmt(rates: list[float]) -> str:
    return "[" + ", ".join(f"{r:.1f}" for r in rates) + "]"


class _Phase:
    """Peak host (and CUDA) memory of one bench phase."""

    def __init__(self, device: torch.device):
        self.device = device
        rss.reset_peak()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

    def memory(self) -> dict[str, float]:
        out = {"peak_rss_mib": rss.peak_mib()}
        if self.device.type == "cuda":
            out["gpu_peak_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


def step_flops_per_image(teacher: torch.nn.Module, student: torch.nn.Module, images: Tensor) -> dict[str, float]:
    """FLOPs per image of a student training step and of a teacher inference forward."""
    from darkknowledge.bench.peak import forward_flops, train_step_flops

    n = images.shape[0]
    student.train()
    return {
        "student_train_step": train_step_flops(student, images) / n,
        "teacher_forward": forward_flops(teacher.eval(), images) / n,
    }


def run_bench(
    *,
    teacher: str = "resnet56",
    student: str = "resnet20",
    batch_size: int = 64,
    num_classes: int = 100,
    image_size: int = 32,
    steps: int = 30,
    repeats: int = 3,
    cache_views: int = 2,
    loss_student: str = "resnet8",
    loss_batch_size: int = 128,
    loss_steps: int = 20,
    methods: list[str] | None = None,
    dataset: ArrayDataset | None = None,
    workers: int = 2,
    precision: str = "auto",
    channels_last: bool = True,
    device: str = "cpu",
    extra: list[str] | None = None,
    peak_seconds: float = 1.0,
    compile_teacher: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``extra``: config overrides of our trainer's loops (e.g. ``engine.compile=true``);
    ``compile_teacher``: also time the live loop with the teacher compiled frozen
    (``engine.compile_teacher``), as ``live_compiled_teacher``."""
    from darkknowledge.bench.peak import capability, matmul_peak
    from darkknowledge.bench.reference import ReferenceKDLoop, reference_loader
    from darkknowledge.engine.factory import resolve_device
    from darkknowledge.engine.precision import resolve_precision
    from darkknowledge.methods import METHODS

    load_config(overrides=list(extra or []))  # a bad override fails here, before anything is timed
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    torch.manual_seed(0)
    n = steps * batch_size
    ds = dataset if dataset is not None else synthetic_dataset(n, num_classes, image_size)
    if dataset is not None:
        ds = ds.subset(torch.arange(min(n, len(ds))))
    num_classes = ds.spec.num_classes
    in_ch = ds.spec.in_channels
    result: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "capability": capability(dev),
            "load_average_at_start": _load_average(),
        },
        "setup": {
            "teacher": teacher,
            "student": student,
            "batch_size": batch_size,
            "steps": steps,
            "repeats": repeats,
            "image_size": list(ds.spec.image_size),
            "num_classes": num_classes,
            "dataset": ds.spec.name,
            "precision": precision,
            "channels_last": channels_last,
            "cache_views": cache_views,
            "workers": workers,
            "device": str(dev),
            "overrides": list(extra or []),
        },
        "images_per_s": {},
        "peak_rss_mib": {},
        "raw": {},
    }
    if dev.type == "cuda":
        result["gpu_peak_mib"] = {}
    t_model = build_model(teacher, num_classes, in_ch).eval()
    s_model = build_model(student, num_classes, in_ch)
    result["setup"]["teacher_params"] = count_parameters(t_model)
    result["setup"]["student_params"] = count_parameters(s_model)
    probe = ds.images[: min(batch_size, len(ds))].float()
    result["flops_per_image"] = step_flops_per_image(t_model, s_model, probe)
    del s_model
    result["peak_gflops"] = {}
    for prec in dict.fromkeys(["fp32", precision]):
        peak = matmul_peak(prec, dev, seconds=peak_seconds)
        result["peak_gflops"][prec] = peak["gflops"]
        log(
            f"matmul peak {prec}: {peak['gflops']:.0f} GFLOP/s ({peak['size']}x{peak['size']}, best of {peak['blocks']})"
        )
    t_model = t_model.to(dev)

    def record(name: str, med: float, raw: list[float], phase: _Phase) -> None:
        result["images_per_s"][name], result["raw"][name] = med, raw
        mem = phase.memory()
        result["peak_rss_mib"][name] = mem["peak_rss_mib"]
        if "gpu_peak_mib" in mem:
            result["gpu_peak_mib"][name] = mem["gpu_peak_mib"]

    # (a) reference loop -------------------------------------------------------------
    log(f"(a) reference loop: {teacher} -> {student}, fp32, DataLoader with {workers} workers")
    phase = _Phase(dev)
    torch.manual_seed(0)
    ref = ReferenceKDLoop(
        build_model(student, num_classes, in_ch),
        build_model(teacher, num_classes, in_ch),
        reference_loader(ds, batch_size, workers=workers),
        device=dev,
    )
    ref.run(3)  # warm-up (worker start, allocator)
    med, raw = _median_rate(functools.partial(ref.run, steps), repeats)
    del ref
    record("reference", med, raw, phase)
    log(f"    {med:8.1f} img/s  {_fmt(raw)}")

    def epoch_rate(tr: Trainer) -> Callable[[], float]:
        state = {"epoch": 0}

        def fn() -> float:
            state["epoch"] += 1
            return tr.train_epoch(state["epoch"])["train_images_per_s"]

        return fn

    # (b) live teacher (and, when asked, the same compiled with frozen weights) ----------
    def live_loop(name: str, title: str, compile: bool) -> None:
        log(f"(b) our trainer, {title}")
        phase = _Phase(dev)
        live = LiveTeacher(
            build_model(teacher, num_classes, in_ch).to(dev),
            precision=precision,
            channels_last=channels_last,
            compile=compile,
        )
        tr = _trainer(student, {"name": "kd"}, ds, batch_size, live, precision, channels_last, extra, str(dev))
        tr.train_epoch(0)  # warm-up (and the compilation)
        med, raw = _median_rate(epoch_rate(tr), repeats)
        del tr, live
        record(name, med, raw, phase)
        log(f"    {med:8.1f} img/s  {_fmt(raw)}")

    live_loop("live", f"live teacher ({precision}, channels_last={channels_last})", compile=False)
    if compile_teacher:
        live_loop(
            "live_compiled_teacher",
            "live teacher compiled with frozen weights (engine.compile_teacher=true)",
            compile=True,
        )

    # (b) cached teacher -------------------------------------------------------------
    log(f"(b) our trainer, cached teacher ({cache_views} views per sample)")
    with tempfile.TemporaryDirectory(prefix="dk-bench-cache-") as tmp:
        t0 = time.perf_counter()
        path = build_cache(
            t_model,
            ds,
            Path(tmp) / "cache",
            num_views=cache_views,
            precision=precision,
            channels_last=channels_last,
            device=dev,
        )
        result["cache_build_s"] = time.perf_counter() - t0
        result["cache_build_images_per_s"] = len(ds) * cache_views / result["cache_build_s"]
        phase = _Phase(dev)
        cached = CachedTeacher(path, device=dev)
        tr = _trainer(student, {"name": "kd"}, ds, batch_size, cached, precision, channels_last, extra, str(dev))
        tr.train_epoch(0)
        med, raw = _median_rate(epoch_rate(tr), repeats)
        del tr, cached
    record("cached", med, raw, phase)
    log(f"    {med:8.1f} img/s  {_fmt(raw)}  (cache build {result['cache_build_s']:.1f}s)")

    # (d) student alone --------------------------------------------------------------
    log("(d) our trainer, student alone (CE)")
    phase = _Phase(dev)
    tr = _trainer(student, {"name": "ce"}, ds, batch_size, None, precision, channels_last, extra, str(dev))
    tr.train_epoch(0)
    med, raw = _median_rate(epoch_rate(tr), repeats)
    del tr
    record("student_only", med, raw, phase)
    log(f"    {med:8.1f} img/s  {_fmt(raw)}")

    # (c) loss overhead --------------------------------------------------------------
    names = methods or [m for m in METHODS.names() if METHODS.get(m).needs_teacher]
    if "kd" not in names:
        names = ["kd"] + names
    log(f"(c) loss overhead over KD: {loss_student}, batch {loss_batch_size}, {num_classes} classes")
    result["loss_overhead"] = loss_overhead(
        names,
        loss_student,
        loss_batch_size,
        loss_steps,
        repeats,
        num_classes,
        image_size,
        in_ch,
        precision,
        channels_last,
        log,
        device=str(dev),
    )

    ips = result["images_per_s"]
    result["ratios"] = {
        "live_vs_reference": ips["live"] / ips["reference"],
        **(
            {"live_compiled_teacher_vs_reference": ips["live_compiled_teacher"] / ips["reference"]}
            if "live_compiled_teacher" in ips
            else {}
        ),
        "cached_vs_reference": ips["cached"] / ips["reference"],
        "cached_epoch_vs_student_only_epoch": ips["student_only"] / ips["cached"],
    }
    result["achieved"] = achieved_gflops(ips, result["flops_per_image"], result["peak_gflops"], precision)
    result["machine"]["load_average_at_end"] = _load_average()
    return result


def _load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (other processes competing for the cores), where the OS has them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def achieved_gflops(
    images_per_s: dict[str, float], flops: dict[str, float], peaks: dict[str, float], precision: str
) -> dict[str, dict[str, Any]]:
    """Each loop's counted GFLOP/s and its fraction of the matmul peak of the precision it runs in
    (the reference loop: fp32; ours: ``precision``)."""
    step, teacher = flops["student_train_step"], flops["teacher_forward"]
    per_image = {"reference": step + teacher, "live": step + teacher, "cached": step, "student_only": step}
    if "live_compiled_teacher" in images_per_s:
        per_image["live_compiled_teacher"] = step + teacher
    out: dict[str, dict[str, Any]] = {}
    for loop, f in per_image.items():
        prec = "fp32" if loop == "reference" else precision
        gflops = images_per_s[loop] * f / 1e9
        out[loop] = {"gflops": gflops, "precision": prec, "fraction_of_peak": gflops / peaks[prec]}
    return out


def loss_overhead(
    names: list[str],
    student: str,
    batch_size: int,
    steps: int,
    repeats: int,
    num_classes: int,
    image_size: int,
    in_channels: int,
    precision: str,
    channels_last: bool,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """Per method: median training-step time (interleaved rounds) and the loss's own extra
    cost over KD as a percentage of a KD training step."""
    from darkknowledge.methods import SetupContext

    n = steps * batch_size
    ds = synthetic_dataset(n, num_classes, image_size, seed=1)
    if in_channels != 3:
        ds = ArrayDataset(
            ds.images[:, :in_channels].contiguous(),
            ds.targets,
            DataSpec(
                "synthetic",
                num_classes,
                in_channels,
                ds.spec.image_size,
                ds.spec.mean[:in_channels],
                ds.spec.std[:in_channels],
                ds.spec.augment,
            ),
        )
    g = torch.Generator().manual_seed(2)
    teacher = TensorTeacher((torch.randn(n, num_classes, generator=g) * 3).to(device))
    trainers = {}
    for name in names:
        tr = _trainer(student, {"name": name}, ds, batch_size, teacher, precision, channels_last, device=device)
        tr.method.setup(
            SetupContext(
                num_classes=num_classes,
                teacher_logits_fn=teacher,
                train_batches=lambda tr=tr: tr.loader.epoch(0),
                device=device,
            )
        )
        tr.train_epoch(0)  # warm-up
        trainers[name] = tr
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name, tr in trainers.items():
            rec = tr.train_epoch(r + 1)
            times[name].append(rec["train_time_s"] / len(tr.loader))
    step_kd = statistics.median(times["kd"])
    # The loss's own cost, timed in isolation (forward + backward of the loss on fixed
    # logits, many repetitions): far less noisy than differencing two whole steps.
    loss_s = {
        name: _loss_time(tr.method, batch_size, num_classes, repeats, device=device) for name, tr in trainers.items()
    }
    out = {}
    for name in names:
        out[name] = {
            "step_s": statistics.median(times[name]),
            "loss_s": loss_s[name],
            "overhead_pct": 100.0 * (loss_s[name] - loss_s["kd"]) / step_kd,
        }
        log(
            f"    {name:8s} step {1000 * out[name]['step_s']:8.2f} ms  loss {1000 * loss_s[name]:6.3f} ms  "
            f"{out[name]['overhead_pct']:+6.2f} % of a KD step"
        )
    return out


def _loss_time(method, batch_size: int, num_classes: int, repeats: int, calls: int = 30, device: str = "cpu") -> float:
    """Median seconds of one loss forward + backward (w.r.t. the student logits)."""
    from darkknowledge.methods import StepContext

    g = torch.Generator().manual_seed(3)
    student = (torch.randn(batch_size, num_classes, generator=g) * 2).to(device).requires_grad_(True)
    teacher = (torch.randn(batch_size, num_classes, generator=g) * 3).to(device)
    targets = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    dev = torch.device(device)
    ctx = StepContext(epoch=5, num_epochs=10, step_in_epoch=0, steps_per_epoch=10)

    def once() -> None:
        loss = sum(method(student, teacher, targets, ctx).values())
        assert isinstance(loss, Tensor)
        loss.backward()
        student.grad = None

    for _ in range(3):
        once()
    samples = []
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        for _ in range(calls):
            once()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        samples.append((time.perf_counter() - t0) / calls)
    method.epoch_stats()  # drop what the timing recorded
    return statistics.median(samples)


def format_report(result: dict[str, Any]) -> str:
    s, ips, r = result["setup"], result["images_per_s"], result["ratios"]
    lines = [
        f"teacher {s['teacher']} ({s['teacher_params'] / 1e6:.2f}M) -> student {s['student']} ({s['student_params'] / 1e6:.2f}M), "
        f"batch {s['batch_size']}, {s['image_size'][0]}x{s['image_size'][1]}, {s['num_classes']} classes, "
        f"{s['steps']} steps x {s['repeats']} repeats (median)"
        + (f"; our loops with {' '.join(s['overrides'])}" if s.get("overrides") else ""),
        "",
        "| loop | images/s | peak RSS (MiB) |",
        "|---|---|---|",
    ]
    labels = {
        "reference": "(a) reference (mdistiller-style, fp32, DataLoader)",
        "live": "(b) ours, live teacher",
        "live_compiled_teacher": "(b) ours, live teacher compiled (frozen weights)",
        "cached": "(b) ours, cached teacher",
        "student_only": "(d) ours, student alone (CE)",
    }
    labels = {k: v for k, v in labels.items() if k in ips}
    for k, label in labels.items():
        lines.append(f"| {label} | {ips[k]:.1f} | {result['peak_rss_mib'][k]:.0f} |")
    if "achieved" in result:
        cap = result["machine"]["capability"]
        flops = result["flops_per_image"]
        lines += [
            "",
            f"device: {cap['name']}"
            + (
                f", torch CPU capability {cap['torch_cpu_capability']}, flags {' '.join(cap['flags'])}"
                if "flags" in cap
                else ""
            )
            + "; matmul peak: "
            + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in result["peak_gflops"].items()),
            f"load average (1/5/15 min) at start {result['machine'].get('load_average_at_start')}, "
            f"at end {result['machine'].get('load_average_at_end')} on {result['machine']['cores']} cores",
            f"FLOPs per image: student training step {flops['student_train_step'] / 1e6:.1f} M, "
            f"teacher forward {flops['teacher_forward'] / 1e6:.1f} M (torch flop counter)",
            "",
            "| loop | achieved GFLOP/s | precision | fraction of its matmul peak |"
            + (" GPU peak (MiB) |" if "gpu_peak_mib" in result else ""),
            "|---|---|---|---|" + ("---|" if "gpu_peak_mib" in result else ""),
        ]
        for k, label in labels.items():
            a = result["achieved"][k]
            row = f"| {label} | {a['gflops']:.1f} | {a['precision']} | {100 * a['fraction_of_peak']:.1f} % |"
            if "gpu_peak_mib" in result:
                row += f" {result['gpu_peak_mib'][k]:.0f} |"
            lines.append(row)
    lines += [
        "",
        "| method | training step (ms) | loss fwd+bwd (ms) | extra time over KD, % of a KD step |",
        "|---|---|---|---|",
    ]
    for name, v in result["loss_overhead"].items():
        lines.append(f"| {name} | {1000 * v['step_s']:.1f} | {1000 * v['loss_s']:.3f} | {v['overhead_pct']:+.2f} % |")
    lines += [
        "",
        f"ratio live/reference: {r['live_vs_reference']:.2f}x",
        *(
            [f"ratio live with the teacher compiled/reference: {r['live_compiled_teacher_vs_reference']:.2f}x"]
            if "live_compiled_teacher_vs_reference" in r
            else []
        ),
        f"ratio cached/reference: {r['cached_vs_reference']:.2f}x",
        f"ratio cached epoch / student-only epoch: {r['cached_epoch_vs_student_only_epoch']:.2f}x",
    ]
    if "isats" in result["loss_overhead"]:
        lines.append(f"isats overhead over kd: {result['loss_overhead']['isats']['overhead_pct']:+.2f} % of a step")
    return "\n".join(lines)


def save_result(result: dict[str, Any], path: str | Path) -> None:
    from darkknowledge.fileio import atomic_write_json

    atomic_write_json(path, result)
