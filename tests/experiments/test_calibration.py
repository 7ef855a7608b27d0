"""The report card checked against measured students (experiments/calibration.py)."""

from __future__ import annotations

import pytest

from darkknowledge.experiments.calibration import (
    card_checks,
    checks_markdown,
    matching_label,
    measured_mismatch,
    paired,
)


def rows(teacher: str, method: str, values: list[float]) -> list[dict]:
    return [{"teacher": teacher, "method": method, "seed": s, "last_top1": v} for s, v in enumerate(values)]


STUDENTS = (
    rows("small", "kd", [50.0, 51.0, 52.0])
    + rows("big", "kd", [49.0, 50.5, 51.0])
    + rows("big", "isats", [50.0, 51.0, 51.5])
    + rows("huge", "kd", [50.0, 51.0])
)
METHODS = [("kd", "kd", {}), ("isats", "isats", {}), ("kd-T8", "kd", {"temperature": 8.0})]


def test_paired_differences_use_common_seeds_only():
    assert paired(STUDENTS, ("big", "kd"), ("small", "kd")) == pytest.approx([-1.0, -0.5, -1.0])
    assert paired(STUDENTS, ("huge", "kd"), ("big", "kd")) == pytest.approx([1.0, 0.5])  # seed 2 missing for huge
    assert paired(STUDENTS, ("nobody", "kd"), ("big", "kd")) == []


def test_measured_mismatch_needs_more_than_one_standard_error():
    assert measured_mismatch([-1.0, -0.5, -1.0]) is True
    assert measured_mismatch([-2.0, 1.5, 0.1]) is False  # negative mean, but within the noise
    assert measured_mismatch([0.3, 0.2]) is False
    assert measured_mismatch([-0.1]) is True and measured_mismatch([]) is None


def test_recommendation_matches_a_label_after_defaults():
    assert matching_label(METHODS, "kd", {"temperature": 4.0}) == "kd"  # 4 is KD's default
    assert matching_label(METHODS, "kd", {"temperature": 8}) == "kd-T8"
    assert matching_label(METHODS, "kd", {"temperature": 2.0}) is None
    assert matching_label(METHODS, "isats", {"tau_min": 0.5, "tau_max": 20.0}) == "isats"
    assert matching_label(METHODS, "nosuch", {}) is None


def test_card_checks_and_agreement_rate():
    cards = [
        {"teacher": "small", "reference": None, "mismatch": None, "method": "kd", "method_params": {}},
        {
            "teacher": "big",
            "reference": "small",
            "mismatch": True,
            "method": "isats",
            "method_params": {"tau_min": 0.5},
        },
        {
            "teacher": "huge",
            "reference": "big",
            "mismatch": True,
            "method": "kd",
            "method_params": {"temperature": 2.0},
        },
    ]
    checks = card_checks(cards, STUDENTS, METHODS)
    assert [c["teacher"] for c in checks] == ["big", "huge"]  # the smallest has no reference
    big, huge = checks
    assert big["measured_mismatch"] is True and big["agree"] is True and big["seeds"] == 3
    assert big["card_label"] == "isats" and big["card_minus_kd"] == pytest.approx(2 / 3) and big["card_seeds"] == 3
    assert (
        huge["measured_mismatch"] is False
        and huge["agree"] is False
        and huge["card_label"] == ""
        and huge["card_seeds"] == 0
    )
    text = checks_markdown(checks)
    assert "**1 of 2**" in text and "| big | small | mismatch |" in text and "not run" in text
    assert checks_markdown([]) == ""
