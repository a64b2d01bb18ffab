"""Mid-run evaluations: BatchNorm statistics recomputed on a copy of the deployable network, training untouched."""

import copy
import json

import pytest
import torch
from torch import nn

from tiny_training import fit_tiny_student
from training.checkpoint import load_checkpoint
from training.config import ConfigError, load_config
from training.weight_averaging import BN_RECALIBRATION_BATCHES


def _independent_recompute(net: nn.Module, loader) -> nn.Module:
    """A copy of ``net`` whose BatchNorm statistics are the plain average over the loader's first batches."""
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
            twin(images)
    return twin.eval()


def test_mid_run_evaluation_uses_recomputed_statistics_and_keeps_the_running_result(tiny_reid_root, teacher_run,
                                                                                    tmp_path):
    out = tmp_path / "student"
    trainer, _ = fit_tiny_student(tiny_reid_root, out, teacher_run, epochs=2, extra=["run.eval_every=1"],
                                  stop_after_epochs=1)
    recorded = json.loads((out / "metrics.json").read_text())["epochs"][0]["eval"]
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}

    again = trainer._evaluate_mid_run()

    for key, value in trainer.net.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed: the evaluation must work on a copy"
    deployed = trainer._deploy_net()[0]
    running = trainer._evaluate(deployed)
    fresh = trainer._evaluate(_independent_recompute(deployed, trainer.loader))
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


def test_final_statistics_are_recomputed_and_only_they_change(tiny_reid_root, teacher_run, tmp_path):
    finals, states = {}, {}
    for on in (True, False):
        out = tmp_path / f"recompute-{on}"
        _, finals[on] = fit_tiny_student(tiny_reid_root, out, teacher_run, epochs=2,
                                         extra=[f"optim.recompute_batchnorm={str(on).lower()}"])
        states[on] = load_checkpoint(out / "checkpoint.pt")
    kinds = ("running_mean", "running_var", "num_batches_tracked")
    statistics = {k for k in states[True]["model"] if k.endswith(kinds)}
    for key, value in states[True]["model"].items():  # every weight equal: only the statistics were recomputed
        assert key in statistics or torch.equal(value, states[False]["model"][key]), key
    assert any(not torch.equal(states[True]["model"][k], states[False]["model"][k])
               for k in statistics if k.endswith("running_mean"))
    # the report keeps what the running statistics gave: the other run's final result
    assert finals[True]["running_stats"] == {k: finals[False][k] for k in ("mAP", "rank1", "asymmetric")}
    assert "running_stats" not in finals[False] and finals[True]["mAP"] != finals[False]["mAP"]
    # ... and the run that exported the running statistics measured the recomputed ones beside them
    assert finals[False]["recomputed_stats"] == {k: finals[True][k] for k in ("mAP", "rank1", "asymmetric")}
    assert states[True]["final_batchnorm"] == {"running_stats": finals[True]["running_stats"]}
