"""`darkknowledge distill` takes its dataset from the teacher checkpoint by default."""

from __future__ import annotations

import json

import yaml

from darkknowledge.cli.main import main
from support import FAST


def test_distill_inherits_teacher_data(tmp_path, teacher3_ckpt, capsys):
    # teacher3 was trained on digits classes 0-2, 20 per class: no data.* key repeated here
    rc = main(
        [
            "distill",
            f"teacher.checkpoint={teacher3_ckpt}",
            "model.name=cnn_w4",
            "optim.epochs=1",
            "data.batch_size=16",
            f"output_dir={tmp_path}",
            "name=s",
            *FAST,
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data_from_teacher"] == {"classes": [0, 1, 2], "train_per_class": 20}
    saved = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert saved["data"]["classes"] == [0, 1, 2] and saved["data"]["train_per_class"] == 20
    assert out["run_dir"].endswith("s")


def test_distill_data_override_wins(tmp_path, teacher3_ckpt, capsys):
    rc = main(
        [
            "distill",
            f"teacher.checkpoint={teacher3_ckpt}",
            "model.name=cnn_w4",
            "optim.epochs=1",
            "data.batch_size=16",
            "data.train_per_class=10",
            f"output_dir={tmp_path}",
            "name=s",
            *FAST,
        ]
    )
    assert rc == 0
    saved = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert saved["data"]["train_per_class"] == 10 and saved["data"]["classes"] == [0, 1, 2]
    assert json.loads(capsys.readouterr().out)["data_from_teacher"] == {"classes": [0, 1, 2]}
