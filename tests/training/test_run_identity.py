"""A run folder is resumed or reused only for the settings it was trained with (`training.run_identity`)."""

import json

import pytest

from tiny_training import tiny_overrides
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.distributed import init_distributed
from training.run_identity import NOT_IDENTITY, RUN_LINKS, RunMismatch, config_differences
from training.trainer import Trainer


def test_differences_list_each_changed_setting_with_both_values():
    saved = {"run": {"epochs": 8, "progress": False, "out_dir": "runs/a"}, "data": {"height": 32, "mean": [0.5]},
             "cdd": {"ratio": 0.99, "added_later": 1}}
    wanted = {"run": {"epochs": 16, "progress": True, "out_dir": "./runs/a"}, "data": {"height": 32, "mean": (0.5,)},
              "cdd": {"ratio": 0.5}}
    assert config_differences(saved, wanted) == [("cdd.ratio", 0.99, 0.5), ("run.epochs", 8, 16)]
    # a setting added after the run was written counts as its default (the behaviour of that time)
    newer = {**wanted, "cdd": {"ratio": 0.99, "form": "plain"}}
    assert config_differences(saved, newer, {"cdd": {"form": "indicator"}}) == [
        ("cdd.form", "indicator", "plain"), ("run.epochs", 8, 16)]
    assert config_differences(saved, {**newer, "cdd": {"ratio": 0.99, "form": "indicator"}},
                              {"cdd": {"form": "indicator"}}) == [("run.epochs", 8, 16)]
    assert config_differences(saved, saved) == []
    assert {"run.progress", "run.out_dir"} <= NOT_IDENTITY and "run.epochs" not in NOT_IDENTITY


def test_a_runs_tree_moved_as_a_whole_is_the_same_runs_but_another_teacher_is_not():
    def student(out, teacher, arch=""):
        return {"run": {"out_dir": out}, "cdd": {"teacher_run": teacher, "static_arch": arch, "refine_from": ""}}

    saved = student("runs/folds/f2/seed0/e", "runs/folds/f2/seed0/teacher", "runs/folds/f2/seed0/cdd/arch.json")
    moved = student("runs/ablation-folds/f2/seed0/e", "runs/ablation-folds/f2/seed0/teacher",
                    "runs/ablation-folds/f2/seed0/cdd/arch.json")
    assert config_differences(saved, moved) == []
    other = student("runs/folds/f2/seed0/e", "runs/folds/f2/seed1/teacher", "runs/folds/f2/seed0/cdd/arch.json")
    assert config_differences(saved, other) == [
        ("cdd.teacher_run", "runs/folds/f2/seed0/teacher", "runs/folds/f2/seed1/teacher")]
    assert config_differences(saved, student("runs/folds/f2/seed0/e", "runs/folds/f2/seed0/teacher")) == [
        ("cdd.static_arch", "runs/folds/f2/seed0/cdd/arch.json", "")]
    renamed = student("runs/demo/student", "runs/folds/f2/seed0/teacher", "runs/folds/f2/seed0/cdd/arch.json")
    assert config_differences(saved, renamed) == []  # the run's own folder renamed: the same teacher path
    assert "cdd.teacher_run" in RUN_LINKS and "data.root" not in RUN_LINKS  # data does not move with the runs


def test_resume_with_other_settings_is_refused_and_the_recorded_config_kept(tiny_reid_root, teacher_run, tmp_path):
    out = tmp_path / "student"
    overrides = tiny_overrides(tiny_reid_root, out, "student", teacher_run, epochs=2) + [
        "run.max_steps_per_epoch=3", "run.eval_every=0"]
    Trainer(load_config("demo-teacher", overrides), init_distributed("cpu")).fit(stop_after_epochs=1)
    recorded = (out / "config.json").read_text()
    other = load_config("demo-teacher", overrides + ["cdd.ratio=0.5", "optim.lr=0.07"])
    with pytest.raises(RunMismatch, match=r"cdd\.ratio: the run has 0\.7, asked for 0\.5; optim\.lr: the run "
                                          r"has 0\.05, asked for 0\.07\)"):
        Trainer(other, init_distributed("cpu"), resume=True).fit()
    assert (out / "config.json").read_text() == recorded
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    same = load_config("demo-teacher", overrides + ["run.progress=true"])
    Trainer(same, init_distributed("cpu"), resume=True).fit()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "final" in metrics and len(metrics["epochs"]) == 2
