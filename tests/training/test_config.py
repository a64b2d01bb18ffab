"""Typed config: presets, extends, overrides, unknown keys rejected with the valid list."""

import pytest

from training.config import ConfigError, load_config
from training.schedule import lr_factor


def test_presets_resolve_and_student_extends_teacher():
    teacher = load_config("demo-teacher")
    student = load_config("demo-student")
    assert teacher.run.kind == "teacher" and student.run.kind == "student"
    assert student.model.depth == teacher.model.depth and student.model.init == "teacher"
    paper = load_config("paper-student")
    assert paper.model.depth == 101 and paper.cdd.memory_size == 24000 and paper.loss.lasso_lambda == 0.004


def test_overrides_are_typed_by_the_config_fields():
    cfg = load_config("demo-teacher", ["optim.lr=0.02", "run.epochs=3", "data.root=some/dir", "run.amp=false",
                                       "data.mean=[0.5, 0.25, 0.5]", "data.std=0.1,0.2,0.3", 'run.out_dir="x y"'])
    assert cfg.optim.lr == 0.02 and cfg.run.epochs == 3 and cfg.data.root == "some/dir" and cfg.run.amp is False
    assert cfg.data.mean == (0.5, 0.25, 0.5) and cfg.data.std == (0.1, 0.2, 0.3) and cfg.run.out_dir == "x y"
    assert load_config("demo-teacher", ["optim.warmup_epochs=3"]).optim.warmup_epochs == 3.0
    with pytest.raises(ConfigError, match="run.amp=yes: expected true or false"):
        load_config("demo-teacher", ["run.amp=yes"])
    with pytest.raises(ConfigError, match="data.mean=0.5,0.5: expected 3 comma-separated values, found 2"):
        load_config("demo-teacher", ["data.mean=0.5,0.5"])


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"optim.lrr: unknown key; valid keys are .*optim.lr, optim.min_lr"):
        load_config("demo-teacher", ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"optimizer.lr: unknown key; valid keys are cdd\..*run\.seed"):
        load_config("demo-teacher", ["optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config("demo-teacher", ["run.epochs=abc"])
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "demo-teacher"\n[model]\ndepthh = 3\n')
    with pytest.raises(ConfigError, match="depthh"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-preset")


def test_lr_schedule_shape():
    args = dict(total_epochs=120, warmup_epochs=10, warmup_factor=0.1, flat_until=40, min_factor=1e-5)
    assert lr_factor(0, **args) == pytest.approx(0.1)
    assert lr_factor(5, **args) == pytest.approx(0.55)
    assert lr_factor(10, **args) == lr_factor(39.9, **args) == 1.0
    assert lr_factor(80, **args) == pytest.approx(0.5 * (1 + 1e-5), rel=1e-6)
    assert lr_factor(120, **args) == pytest.approx(1e-5)


def test_defaults_are_the_demo_teacher_preset_and_the_rest_library_defaults():
    from training.config import CDDConfig, LossConfig, TrainConfig

    defaults, teacher = TrainConfig(), load_config("demo-teacher")
    assert (defaults.run, defaults.data, defaults.model, defaults.optim) == (
        teacher.run, teacher.data, teacher.model, teacher.optim)
    assert load_config(None) == defaults  # cdd-train with no preset or file trains the demo teacher
    # loss and cdd: library defaults (the paper's values, extensions off), which the paper preset keeps
    paper = load_config("paper-student")
    assert (paper.loss, paper.cdd.memory_size, paper.cdd.ratio) == (LossConfig(), CDDConfig().memory_size,
                                                                    CDDConfig().ratio)
