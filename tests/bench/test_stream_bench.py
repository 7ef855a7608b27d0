"""``darkknowledge bench --data`` on a small generated folder (speed is not asserted, only the report)."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from darkknowledge.bench.data import format_data_report, run_data_bench


def _folder(root, n=12):
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((80, 60))
        buf = io.BytesIO()
        img.save(buf, "JPEG")
        (d / f"{i}.jpg").write_bytes(buf.getvalue())
    return root


def test_data_bench_reports_every_worker_count(tmp_path):
    result = run_data_bench(_folder(tmp_path / "imgs"), workers=(0, 1), batch_size=4, crop_size=32, passes=1)
    assert result["images"] == 12 and [r["workers"] for r in result["rows"]] == [0, 1]
    for r in result["rows"]:
        assert all(r[k] > 0 for k in ("reference", "ours", "floor"))
    report = format_data_report(result)
    assert report.count("\n| ") == 3 and "min |" in report


def test_cli_bench_data(tmp_path, capsys):
    from darkknowledge.cli.main import main

    folder = _folder(tmp_path / "imgs", 6)
    out = tmp_path / "r.json"
    args = ["bench", "--data", str(folder), "--data-workers", "0", "--data-passes", "1", "--crop-size", "24"]
    assert main([*args, "--batch-size", "3", "--out", str(out)]) == 0
    assert "ours / reference" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"][0]["workers"] == 0
    assert main(["bench", "--data", str(tmp_path / "missing")]) == 2
    assert "error: bench --data" in capsys.readouterr().err
