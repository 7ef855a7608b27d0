"""Diagnostics of trained checkpoints: load them, run them once over a split, diagnose."""

from __future__ import annotations

from pathlib import Path

from darkknowledge.data.loader import eval_batches
from darkknowledge.diagnostics import collect_outputs, diagnose
from darkknowledge.engine.assembly import build_split, check_teacher_fits, checkpoint_data_config
from darkknowledge.engine.checkpoint import load_model
from darkknowledge.models import count_parameters


def diagnose_checkpoints(teachers: list[str], students: list[str], data_overrides: list[str], *, split: str = "train",
                         out_dir: str | Path = "runs/diagnose", options=None, device: str = "cpu"):
    """Load checkpoints, run them over the (un-augmented) split once, and diagnose."""
    models = [(p, *load_model(p, device)) for p in teachers + students]
    d = checkpoint_data_config(models[0][2], data_overrides, "diagnose")
    ds = build_split(d, train=split == "train")
    outputs, used = [], set()
    for i, (path, model, ckpt) in enumerate(models):
        check_teacher_fits(ckpt, ds.spec, path)
        name = Path(path).parent.name or Path(path).stem
        if name in used:  # the same run given twice (e.g. as teacher and student), or two best.pt of one dir
            name = f"{name}-{'student' if i >= len(teachers) else 'teacher'}{i}"
        used.add(name)
        outputs.append(collect_outputs(model, eval_batches(ds, d.eval_batch_size, device, channels_last=False),
                                       device, name=name, num_params=count_parameters(model)))
    t_out, s_out = outputs[: len(teachers)], outputs[len(teachers):]
    t_out.sort(key=lambda o: o.num_params or 0)
    return diagnose(t_out, s_out, out_dir=out_dir, options=options)
