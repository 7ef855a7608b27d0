"""Configuration: defaults, YAML files, overrides, validation errors, presets, schedule."""

from __future__ import annotations

import math

import pytest

from darkknowledge.config import (
    OptimConfig,
    RunConfig,
    bundled_configs,
    load_config,
    parse_override,
)
from darkknowledge.engine.schedule import learning_rate
from darkknowledge.errors import UserError

# ----------------------------------------------------------------------------- defaults / loading


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.data.name == "digits"
    assert cfg.method.name == "ce"
    assert cfg.optim.epochs == 240 and cfg.optim.lr == 0.05
    assert cfg.run_name() == f"{cfg.model.name}-ce-s0"
    assert RunConfig() == cfg


def test_yaml_file_and_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(
        "data:\n  name: digits\n  batch_size: 32\n"
        "optim:\n  lr: 0.2\n  epochs: 7\n"
        "method:\n  name: kd\n  temperature: 2\n"
    )
    cfg = load_config(
        str(f),
        [
            "optim.lr=0.1",  # override beats the file
            "optim.milestones=[3, 5]",  # list
            "engine.progress=false",  # bool
            "engine.channels_last=False",
            "data.classes=[0,1,2]",
            "seed=7",  # int at top level
            "method.kd_weight=0.5",
            "optim.weight_decay=1e-4",  # YAML 1.1 reads this as a string; pydantic must still give a float
        ],
    )
    assert cfg.data.batch_size == 32  # from the file
    assert cfg.optim.epochs == 7
    assert cfg.optim.lr == 0.1
    assert cfg.optim.milestones == [3, 5]
    assert cfg.engine.progress is False and cfg.engine.channels_last is False
    assert cfg.data.classes == [0, 1, 2]
    assert cfg.seed == 7
    assert cfg.optim.weight_decay == pytest.approx(1e-4)
    assert cfg.method.name == "kd"
    assert cfg.method.params.temperature == 2.0  # from the file
    assert cfg.method.params.kd_weight == 0.5  # override
    assert cfg.method.params.ce_weight == 0.1  # method default filled in


def test_parse_override_values():
    assert parse_override("optim.lr=0.1") == (["optim", "lr"], 0.1)
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("name=hello") == (["name"], "hello")
    assert parse_override("x=a=b") == (["x"], "a=b")  # only the first '=' splits
    assert parse_override("data.root=") == (["data", "root"], None)


@pytest.mark.parametrize("text", ["optim.lr", "=3"])
def test_malformed_override(text):
    with pytest.raises(UserError, match="override"):
        load_config(overrides=[text])


def test_override_through_a_value_is_an_error():
    with pytest.raises(UserError, match="optim.lr"):
        load_config(overrides=["optim.lr.x=1"])
    with pytest.raises(UserError, match="'lr' is a value"):
        load_config(overrides=["optim.lr=0.1", "optim.lr.x=1"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("engine.bogus=1", "engine.bogus"),
        ("datta.name=digits", "datta"),
    ],
)
def test_unknown_key_names_it(override, key):
    with pytest.raises(UserError) as exc:
        load_config(overrides=[override])
    msg = str(exc.value)
    assert f"{key}: unknown key" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=fast", "optim.lr"),
        ("optim.epochs=2.5", "optim.epochs"),
        ("optim.epochs=0", "optim.epochs"),
        ("data.batch_size=[1]", "data.batch_size"),
        ("engine.precision=fp8", "engine.precision"),
        ("optim.schedule=linear", "optim.schedule"),
        ("engine.progress=maybe", "engine.progress"),
        ("optim.milestones=oops", "optim.milestones"),
    ],
)
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(UserError) as exc:
        load_config(overrides=[override])
    assert f"{key}:" in str(exc.value)


def test_method_params_validated_by_the_method():
    with pytest.raises(UserError) as exc:
        load_config(overrides=["method.name=kd", "method.temperature=-1"])
    assert "method.temperature" in str(exc.value)
    with pytest.raises(UserError) as exc:
        load_config(overrides=["method.name=kd", "method.bogus=1"])
    assert "method.bogus" in str(exc.value)
    # ce has no temperature: a kd parameter is an error for ce
    with pytest.raises(UserError, match="method.temperature"):
        load_config(overrides=["method.temperature=4"])


def test_unknown_method_lists_valid_ones():
    with pytest.raises(UserError) as exc:
        load_config(overrides=["method.name=kdd"])
    msg = str(exc.value)
    assert "kdd" in msg and "kd" in msg and "ce" in msg


def test_missing_config_file():
    with pytest.raises(UserError, match="not found"):
        load_config("/nonexistent/config.yaml")


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(UserError):
        load_config(str(tmp_path))


def test_invalid_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(str(f))
    f.write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(str(f))


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(UserError) as exc:
        load_config(str(f))
    assert str(f) in str(exc.value) and "optim.lrr" in str(exc.value)


# ----------------------------------------------------------------------------- presets


def test_bundled_presets_listed():
    names = bundled_configs()
    assert "cifar100_kd" in names and "cifar100_teacher" in names


@pytest.mark.parametrize("name", ["cifar100_kd", "cifar100_teacher", "cifar100_kd.yaml"])
def test_presets_give_the_standard_recipe(name):
    cfg = load_config(name)
    assert cfg.data.name == "cifar100"
    assert cfg.data.batch_size == 64
    o = cfg.optim
    assert o.epochs == 240
    assert o.lr == 0.05
    assert o.momentum == 0.9
    assert o.milestones == [150, 180, 210]
    assert o.gamma == 0.1
    assert o.weight_decay == 5e-4
    assert o.schedule == "multistep"
    if name.startswith("cifar100_kd"):
        assert cfg.method.name == "kd"
        p = cfg.method.params
        assert (p.temperature, p.ce_weight, p.kd_weight) == (4.0, 0.1, 0.9)
    else:
        assert cfg.method.name == "ce"


def test_preset_with_overrides():
    cfg = load_config("cifar100_kd", ["model.name=resnet20", "teacher.checkpoint=t.pt", "method.temperature=2"])
    assert cfg.model.name == "resnet20"
    assert cfg.teacher.checkpoint == "t.pt"
    assert cfg.method.params.temperature == 2.0
    assert cfg.method.params.kd_weight == 0.9


def test_to_yaml_round_trips(tmp_path):
    cfg = load_config(
        "cifar100_kd",
        [
            "model.name=resnet20",
            "method.logit_standardization=true",
            "data.classes=[3,1]",
            "optim.warmup_epochs=2.5",
            "engine.threads=2",
            "name=x",
        ],
    )
    f = tmp_path / "config.yaml"
    f.write_text(cfg.to_yaml())
    again = load_config(str(f))
    assert again == cfg
    assert again.to_yaml() == cfg.to_yaml()
    assert again.method.params == cfg.method.params


def test_base_dict_is_not_mutated():
    base = {"method": {"name": "kd"}}
    cfg = load_config(overrides=["method.temperature=3"], base=base)
    assert cfg.method.params.temperature == 3.0
    assert base == {"method": {"name": "kd"}}


# ----------------------------------------------------------------------------- schedule


def test_multistep_matches_mdistiller():
    o = OptimConfig()  # lr 0.05, milestones 150/180/210, gamma 0.1

    def mdistiller(epoch_1indexed: int) -> float:
        # mdistiller: steps = sum(epoch > stages) with 1-indexed epochs
        return 0.05 * 0.1 ** sum(epoch_1indexed > s for s in (150, 180, 210))

    for e in range(240):
        assert learning_rate(o, e) == pytest.approx(mdistiller(e + 1), rel=1e-12), e
        assert learning_rate(o, e, 0.99) == pytest.approx(mdistiller(e + 1), rel=1e-12), e
    assert learning_rate(o, 149) == pytest.approx(0.05)
    assert learning_rate(o, 150) == pytest.approx(0.005)
    assert learning_rate(o, 179) == pytest.approx(0.005)
    assert learning_rate(o, 180) == pytest.approx(5e-4)
    assert learning_rate(o, 210) == pytest.approx(5e-5)
    assert learning_rate(o, 239) == pytest.approx(5e-5)


def test_warmup_is_linear():
    o = OptimConfig(lr=0.1, warmup_epochs=2, schedule="multistep", milestones=[5])
    assert learning_rate(o, 0, 0.0) == 0.0
    assert learning_rate(o, 0, 0.5) == pytest.approx(0.025)
    assert learning_rate(o, 1, 0.0) == pytest.approx(0.05)
    assert learning_rate(o, 1, 0.5) == pytest.approx(0.075)
    assert learning_rate(o, 2, 0.0) == pytest.approx(0.1)
    assert learning_rate(o, 5, 0.0) == pytest.approx(0.01)
    # strictly increasing during warm-up
    ts = [(e, f) for e in range(2) for f in (0.0, 0.25, 0.5, 0.75)]
    lrs = [learning_rate(o, e, f) for e, f in ts]
    assert all(a < b for a, b in zip(lrs, lrs[1:]))


def test_cosine_endpoints():
    o = OptimConfig(lr=0.1, min_lr=0.001, epochs=10, schedule="cosine")
    assert learning_rate(o, 0) == pytest.approx(0.1)
    assert learning_rate(o, 5) == pytest.approx(0.001 + 0.5 * 0.099)
    assert learning_rate(o, 9, 0.999999) == pytest.approx(0.001, abs=1e-6)
    assert learning_rate(o, 10) == pytest.approx(0.001)  # clamped after the end
    lrs = [learning_rate(o, e) for e in range(10)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    # cosine after warm-up starts at lr when warm-up ends
    w = OptimConfig(lr=0.1, epochs=10, warmup_epochs=2, schedule="cosine")
    assert learning_rate(w, 1, 0.5) == pytest.approx(0.075)
    assert learning_rate(w, 2) == pytest.approx(0.1)
    assert learning_rate(w, 6) == pytest.approx(0.05)
    assert math.isclose(learning_rate(w, 10), 0.0, abs_tol=1e-12)


def test_constant_schedule():
    o = OptimConfig(lr=0.3, schedule="constant")
    assert {learning_rate(o, e, f) for e in (0, 100, 239) for f in (0.0, 0.5)} == {0.3}


@pytest.mark.parametrize("text", ["123", "001", "0123", "off", "yes", "1.50", "2024-01-01", "12:30"])
def test_text_fields_take_override_text_verbatim(text):
    # overrides are YAML-parsed: `name=001` would be the int 1, `name=off` False, `12:30` 750
    cfg = load_config(overrides=[f"name={text}", f"data.root={text}", f"teacher.checkpoint={text}"])
    assert cfg.name == cfg.data.root == cfg.teacher.checkpoint == text
    assert cfg.run_dir().name == text
    # numeric fields still parse numbers
    assert load_config(overrides=["seed=001"]).seed == 1
    assert load_config(overrides=['name="quoted"', "data.root="]).name == "quoted"
