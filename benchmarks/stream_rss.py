"""Peak memory of one streaming epoch against the number of images (issue 19: growth < 10 % from 1k to 50k).

    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/stream_rss.py --sizes 1000 50000

Generates class folders of small JPEGs under ``--tmp`` (kept for re-runs, never in the
repository), then for each size runs, in a fresh process, the index build + one training
epoch of :class:`darkknowledge.data.streaming.StreamingLoader` (persistent workers) while a
thread samples the memory of that process and its workers every 20 ms: the sum of their PSS
(proportional set size: pages shared copy-on-write between the main process and the workers
count once) and the sum of their RSS. Prints the peaks and the growth from the smallest size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def make_folder(root: Path, n: int, classes: int = 100, seed: int = 0) -> Path:
    """``root/train/c<k>/<i>.JPEG``: ``n`` smooth random JPEGs of 96..160 px (written once)."""
    from PIL import Image

    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / "train" / f"c{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(96, 161, 2))
        small = (rng.random((4, 5, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(folder / f"{i:06d}.JPEG", quality=85)
    done.touch()
    return root


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for c in children:
        pids.extend(_tree(int(c)))
    return pids


def _memory(pid: int) -> tuple[int, int]:
    """(sum of PSS, sum of RSS) in bytes over ``pid`` and its descendants."""
    pss = rss = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return pss, rss


def run_epoch(folder: str, workers: int, batch_size: int, crop: int) -> dict:
    """In this process: index + one epoch, memory sampled by a thread."""
    import torch

    from darkknowledge.data.sources import index_class_folders
    from darkknowledge.data.streaming import StreamingDataset, StreamingLoader

    torch.set_num_threads(1)
    peak = {"pss": 0, "rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pss, rss = _memory(os.getpid())
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    source = index_class_folders(folder, "train", "train", name="imagefolder")
    ds = StreamingDataset(source, "rss", crop_size=crop, resize_size=crop, decoder="pil")
    loader = StreamingLoader(ds, batch_size, train=True, workers=workers)
    images = 0
    for batch in loader.epoch(0):
        images += len(batch)
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return {"images": images, "files": len(ds), "seconds": seconds, "peak_pss": peak["pss"], "peak_rss": peak["rss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 50000])
    p.add_argument("--tmp", default="/tmp/dk_stream_rss", help="where the generated folders live")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_epoch(args.child, args.workers, args.batch_size, args.crop)))
        return
    rows = []
    for n in args.sizes:
        folder = make_folder(Path(args.tmp) / f"n{n}", n)
        cmd = [sys.executable, __file__, "--child", str(folder), "--workers", str(args.workers)]
        cmd += ["--batch-size", str(args.batch_size), "--crop", str(args.crop)]
        out = subprocess.run(
            cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"size": n, **row})
    base = rows[0]
    print(f"workers {args.workers}, batch {args.batch_size}, crop {args.crop}; peak over the process and its workers")
    print("| images | epoch s | img/s | peak PSS MiB | growth | peak RSS MiB | growth |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.0f} | {r['peak_pss'] / 2**20:.0f} "
            f"| {100 * (r['peak_pss'] / base['peak_pss'] - 1):+.1f} % | {r['peak_rss'] / 2**20:.0f} "
            f"| {100 * (r['peak_rss'] / base['peak_rss'] - 1):+.1f} % |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
