"""The policy and the copy of a teacher cache held in the device's memory (``data/resident.py``)."""

from __future__ import annotations

import numpy as np
import torch

from darkknowledge.data import resident as res


def test_held_on_an_accelerator_when_it_takes_at_most_a_quarter_of_its_free_memory():
    cuda = torch.device("cuda")
    assert res.RESIDENT_SHARE == 0.25
    assert res.holds_on_device(250, cuda, None, free_bytes=1000)
    assert not res.holds_on_device(251, cuda, None, free_bytes=1000)
    assert not res.holds_on_device(1, torch.device("cpu"), None)  # a CPU maps the files: nothing to copy
    assert res.holds_on_device(10**15, torch.device("cpu"), True) and not res.holds_on_device(1, cuda, False, 10**9)


def test_to_device_concatenates_the_parts_in_slices(monkeypatch):
    monkeypatch.setattr(res, "_COPY_BYTES", 3 * 4 * 2)  # three rows of (4,) float16 per copy
    parts = [np.arange(20, dtype=np.float16).reshape(5, 4), np.arange(8, dtype=np.float16).reshape(2, 4)]
    out = res.to_device(parts, torch.device("cpu"))
    assert out.dtype == torch.float16 and torch.equal(out, torch.from_numpy(np.concatenate(parts)))
