"""Mid-run evaluations: BatchNorm statistics recomputed on a copy of the deployable network, training untouched."""

import copy
import json

import pytest
import torch
from torch import nn

from tiny_training import fit_tiny_student
from training.checkpoint import load_checkpoint
from training.config import ConfigError, load_config
from training.distill_mixup import DistillMixup
from training.weight_averaging import BN_RECALIBRATION_BATCHES


def _independent_recompute(net: nn.Module, loader, mix) -> nn.Module:
    """A copy of ``net`` whose BatchNorm statistics are the plain average over the loader's first batches, each
    with its mixed copy (``mix(images, step)``) as the training forward sees it."""
    twin = copy.deepcopy(net)
    norms = [m for m in twin.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    assert norms, "the tiny network has no BatchNorm layer: nothing to check"
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    twin.train()
    with torch.no_grad():
        for step, (images, _, _, _) in enumerate(loader):
            if step >= BN_RECALIBRATION_BATCHES:
                break
            twin(mix(images, step))  # epoch 0: the draws of its first steps
    return twin.eval()


def test_mid_run_evaluation_uses_recomputed_statistics_and_keeps_the_running_result(tiny_reid_root, teacher_run,
                                                                                    tmp_path):
    out = tmp_path / "student"
    trainer, _ = fit_tiny_student(tiny_reid_root, out, teacher_run, epochs=2, extra=["run.eval_every=1"],
                                  stop_after_epochs=1)
    recorded = json.loads((out / "metrics.json").read_text())["epochs"][0]["eval"]
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}

    again = trainer._evaluate_mid_run(0)

    for key, value in trainer.net.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed: the evaluation must work on a copy"
    deployed = trainer._deploy_net()[0]
    running = trainer._evaluate(deployed)
    cfg = trainer.cfg
    assert cfg.loss.distill_mixup_alpha > 0, "the demo student trains with the mixed copy; the check needs it"
    mix = DistillMixup(cfg.loss.distill_mixup_alpha, cfg.run.seed, 0)
    fresh = trainer._evaluate(_independent_recompute(deployed, trainer.loader, mix))
    clean = trainer._evaluate(_independent_recompute(deployed, trainer.loader, lambda images, step: images))
    assert clean["mAP"] != fresh["mAP"], "statistics without the mixed copy must not pass for the same thing"
    assert again["running_stats"] == {"mAP": running["mAP"], "rank1": running["rank1"],
                                      "asymmetric": running["asymmetric"]}
    assert {k: again[k] for k in fresh} == fresh
    assert fresh["mAP"] != running["mAP"], "the tiny run cannot tell the two statistics apart"
    assert recorded == again  # what metrics.json holds for epoch 1 is this evaluation of the epoch-1 weights


def test_recomputing_statistics_for_evaluations_does_not_change_training(tiny_reid_root, teacher_run, tmp_path):
    states, checks = {}, {}
    for mode in ("recompute", "running"):
        out = tmp_path / mode
        _, final = fit_tiny_student(tiny_reid_root, out, teacher_run, epochs=2,
                                    extra=["run.eval_every=1", f'run.eval_batchnorm="{mode}"'])
        states[mode] = load_checkpoint(out / "checkpoint.pt")["model"]
        checks[mode] = final["compression"]["collapse_check"]
        first = json.loads((out / "metrics.json").read_text())["epochs"][0]["eval"]
        assert ("running_stats" in first) == (mode == "recompute")
    for key, value in states["recompute"].items():
        assert torch.equal(value, states["running"][key]), key
    # the same training evaluated with running statistics: the same collapse check as the run that only used them
    assert checks["recompute"]["running_stats"] == checks["running"]
    assert checks["running"]["evaluations_after_reset_start"] == 2 and "running_stats" not in checks["running"]


def test_unknown_eval_batchnorm_is_a_config_error():
    with pytest.raises(ConfigError, match=r"run.eval_batchnorm must be one of \('recompute', 'running'\), "
                                          r"found 'fresh'"):
        load_config("demo-student", ['run.eval_batchnorm="fresh"'])
