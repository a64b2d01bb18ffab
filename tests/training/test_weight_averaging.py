"""Weight averaging over the last epochs: the mean itself, reset rows, BatchNorm, and a real tiny run."""

import pytest
import torch
from torch import nn

from tiny_training import assert_slim_equals_full, fit_tiny_student
from training.arch_spec import ArchSpec
from training.checkpoint import load_checkpoint
from training.config import ConfigError, load_config
from training.pruning import block_prefixes
from training.weight_averaging import WeightAverage, recalibrate_batchnorm


def _linear(value: float) -> nn.Linear:
    layer = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        layer.weight.fill_(value)
    return layer


def test_only_the_last_epochs_are_averaged():
    average = WeightAverage(0.5, epochs=4)
    assert average.first_epoch == 3
    for epoch, value in [(1, 100.0), (2, -50.0), (3, 1.0), (4, 4.0)]:
        average.update(_linear(value), epoch)
    assert average.count == 2
    net = _linear(0.0)
    average.apply(net, [])
    assert torch.equal(net.weight, torch.full((3, 2), 2.5))
    assert average.applied
    untouched = nn.Sequential(_linear(7.0), nn.BatchNorm1d(3))
    untouched[1].running_mean.fill_(5.0)
    average.apply(untouched, [])  # applied once: a second call leaves the network alone
    assert torch.equal(untouched[0].weight, torch.full((3, 2), 7.0))
    assert torch.equal(untouched[1].running_mean, torch.full((3,), 5.0))
    with pytest.raises(ValueError, match=r"average_last must be in \[0, 1\], found 1.5"):
        WeightAverage(1.5, epochs=4)


def test_reset_rows_are_zero_in_the_mean_even_when_reset_inside_the_window():
    average = WeightAverage(1.0, epochs=2)
    average.update(_linear(2.0), 1)
    average.update(_linear(0.0), 2)  # as if row 1 were reset between the snapshots
    net = _linear(0.0)
    mask = torch.tensor([False, True, False])
    average.apply(net, [], indicator_weights=[net.weight], reset_masks=[mask])
    assert torch.equal(net.weight, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))


def test_batchnorm_statistics_are_the_average_over_the_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    batches = [torch.randn(16, 4) * (i + 1) + i for i in range(3)]
    with torch.no_grad():
        hidden = [net[0](b) for b in batches]
    assert recalibrate_batchnorm(net, batches) == 3
    bn = net[1]
    assert not net.training and bn.momentum == 0.1  # momentum restored, left in eval mode
    expected_mean = torch.stack([h.mean(0) for h in hidden]).mean(0)
    expected_var = torch.stack([h.var(0, unbiased=True) for h in hidden]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, rtol=1e-4)


def test_average_last_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"optim.average_last must be a fraction of the run in \[0, 1\].*found -0.2"):
        load_config("demo-student", ["optim.average_last=-0.2"])


def _student(root, out, teacher_run, average_last, **fit):
    return fit_tiny_student(root, out, teacher_run, 3, [f"optim.average_last={average_last}"], **fit)


def test_tiny_run_deploys_the_mean_of_its_last_two_epochs_and_resumes_exactly(tiny_reid_root, teacher_run,
                                                                           tmp_path):
    # plain run, stopped after epoch 2 and resumed: its checkpoints hold the epoch-2 and epoch-3 weights
    plain = tmp_path / "plain"
    _student(tiny_reid_root, plain, teacher_run, 0.0, stop_after_epochs=2)
    epoch2 = load_checkpoint(plain / "checkpoint.pt")["model"]
    _student(tiny_reid_root, plain, teacher_run, 0.0, resume=True)
    epoch3 = load_checkpoint(plain / "checkpoint.pt")["model"]

    averaged = tmp_path / "averaged"  # same training, final weights = mean of the epoch-2 and -3 ends
    trainer, final = _student(tiny_reid_root, averaged, teacher_run, 0.67)
    state = load_checkpoint(averaged / "checkpoint.pt")
    assert state["weight_average"]["applied"] and state["weight_average"]["count"] == 2
    masks = [m.cpu() for m in trainer.resetter.masks]
    assert sum(int(m.sum()) for m in masks) > 0
    spec = ArchSpec.load(averaged / "arch.json")
    reset_rows = {prefix + "indicator.weight": mask for prefix, mask in zip(block_prefixes(spec), masks, strict=True)}
    changed = 0
    for key, value in state["model"].items():
        if not value.is_floating_point() or "running_" in key:  # BatchNorm statistics: recomputed
            continue
        expected = (epoch2[key] + epoch3[key]) / 2
        if key in reset_rows:
            expected[reset_rows[key]] = 0.0
        assert torch.allclose(value, expected, atol=1e-6), key
        changed += not torch.equal(epoch2[key], epoch3[key])
    assert changed > 10, "the two epoch ends did not differ, so the test could not tell a mean from either"
    bn = "backbone.bn1.running_mean"
    # recomputed for the mean, not the mean of the snapshots' running statistics
    assert not torch.allclose(state["model"][bn], (epoch2[bn] + epoch3[bn]) / 2, atol=1e-4)
    # reset rows exactly zero, so the slim network is the full one
    assert_slim_equals_full(state["model"], spec)

    resumed = tmp_path / "resumed"  # killed after epoch 2, with one snapshot in the mean
    _student(tiny_reid_root, resumed, teacher_run, 0.67, stop_after_epochs=2)
    mid = load_checkpoint(resumed / "checkpoint.pt")["weight_average"]
    assert mid["count"] == 1 and not mid["applied"]
    _, resumed_final = _student(tiny_reid_root, resumed, teacher_run, 0.67, resume=True)
    for key, value in load_checkpoint(resumed / "checkpoint.pt")["model"].items():
        assert torch.equal(value, state["model"][key]), key
    assert resumed_final["mAP"] == final["mAP"]
