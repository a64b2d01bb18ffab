"""The refine stage: starts from the CDD run's final weights, keeps its architecture exactly, holds the pruned
indicator rows at zero through training, and refuses sources and settings it cannot honour."""

import json
import shutil

import pytest
import torch

from tiny_training import assert_slim_equals_full, fit_tiny_student
from training.arch_spec import ArchSpec
from training.checkpoint import load_checkpoint
from training.config import ConfigError, load_config
from training.distributed import init_distributed
from training.refine import RefineError, RefineSource
from training.trainer import Trainer

REFINE = ["cdd.gradient_reset=false", "loss.lasso_lambda=0"]
# Weight averaging zeroes the pruned rows at the end of a run by itself; without it the checkpoint shows what
# every optimizer step left.
NO_AVERAGE = ["optim.average_last=0"]


def _refine_overrides(student_run):
    return REFINE + [f'cdd.refine_from="{student_run}"']


def _pruned(spec: ArchSpec) -> int:
    return sum(p - len(k) for (_, p), k in zip(spec.blocks(), spec.kept_channels, strict=True))


def test_refine_trains_the_cdd_architecture_with_pruned_rows_held_at_exactly_zero(tiny_reid_root, teacher_run,
                                                                                  student_run, tmp_path):
    source = ArchSpec.load(student_run / "arch.json")
    assert _pruned(source) > 0, "the tiny CDD run must prune something for this test to mean anything"
    start = load_checkpoint(student_run / "checkpoint.pt", kind="student")["model"]
    trainer, final = fit_tiny_student(tiny_reid_root, tmp_path / "refine", teacher_run, 2,
                                      _refine_overrides(student_run) + NO_AVERAGE)
    refined = ArchSpec.load(tmp_path / "refine" / "arch.json")
    assert refined.kept_channels == source.kept_channels
    assert final["flops"] == json.loads((student_run / "metrics.json").read_text())["final"]["flops"]
    state = load_checkpoint(tmp_path / "refine" / "checkpoint.pt", kind="student")["model"]
    moved = 0
    for prefix_mask, (key, weight) in zip(trainer.refine.masks(),
                                          ((k, v) for k, v in state.items() if k.endswith("indicator.weight")),
                                          strict=True):
        assert torch.count_nonzero(weight[prefix_mask]) == 0, key
        moved += int(not torch.equal(weight[~prefix_mask], start[key][~prefix_mask]))
    assert moved > 0  # the kept rows were trained
    assert final["refine"]["from"] == str(student_run)
    assert final["refine"]["start_mAP"] == json.loads((student_run / "metrics.json").read_text())["final"]["mAP"]
    assert_slim_equals_full(state, refined)


def test_refine_starts_from_the_cdd_runs_final_weights(tiny_reid_root, teacher_run, student_run, tmp_path):
    from tiny_training import tiny_overrides

    overrides = tiny_overrides(tiny_reid_root, tmp_path / "r", "student", teacher_run) + _refine_overrides(student_run)
    trainer = Trainer(load_config("demo-student", overrides), init_distributed("cpu"))
    start = load_checkpoint(student_run / "checkpoint.pt", kind="student")["model"]
    own = trainer.net.state_dict()
    assert own.keys() == start.keys()
    assert all(torch.equal(own[k], start[k]) for k in start)


def test_refine_settings_that_would_prune_or_regrow_are_refused(student_run):
    with pytest.raises(ConfigError, match="cdd.gradient_reset = false"):
        load_config("demo-refine", [f'cdd.refine_from="{student_run}"', "cdd.gradient_reset=true"])
    with pytest.raises(ConfigError, match=r"loss.lasso_lambda = 0 \(found 0.004\)"):
        load_config("demo-refine", [f'cdd.refine_from="{student_run}"', "loss.lasso_lambda=0.004"])


def test_refine_sources_that_are_not_finished_cdd_students_are_refused(teacher_run, student_run, tmp_path):
    spec = ArchSpec.load(student_run / "arch.json")
    full = ArchSpec(**{**spec.__dict__, "kept_channels": None})
    with pytest.raises(RefineError, match="expected a CDD student"):
        RefineSource.load(teacher_run, full)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(student_run, unfinished)
    metrics = json.loads((unfinished / "metrics.json").read_text())
    metrics.pop("final")
    (unfinished / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(RefineError, match="has not finished"):
        RefineSource.load(unfinished, full)
    with pytest.raises(RefineError, match="embedding_dim is 32, this run's data/model config gives 64"):
        RefineSource.load(student_run, ArchSpec(**{**full.__dict__, "embedding_dim": 64}))


def test_refine_from_the_teacher_starts_as_the_teacher_sliced_to_cdds_channels(tiny_reid_root, teacher_run,
                                                                               student_run, tmp_path):
    from dataclasses import replace

    from tiny_training import tiny_overrides
    from training.models.network import ReIDNet
    from training.pruning import slice_teacher_state

    overrides = (tiny_overrides(tiny_reid_root, tmp_path / "r", "student", teacher_run)
                 + _refine_overrides(student_run) + ['cdd.refine_init="teacher"'])
    trainer = Trainer(load_config("demo-student", overrides), init_distributed("cpu"))
    kept = ArchSpec.load(student_run / "arch.json").kept_channels
    plain = replace(trainer.teacher.spec, kept_channels=kept)
    sliced = ReIDNet(plain)
    sliced.load_state_dict(slice_teacher_state(trainer.teacher.state_dict(), plain), strict=True)
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(trainer.net.eval()(x), sliced.eval()(x), atol=1e-5)
        assert not torch.allclose(trainer.net(x), trainer.teacher(x), atol=1e-3)  # channels really are cut


def test_a_start_from_the_teacher_takes_any_arch_of_kept_channels_and_keeps_exactly_those(
        tiny_reid_root, teacher_run, student_run, tmp_path):
    from training.pruning import l1_kept_channels

    cdd = ArchSpec.load(student_run / "arch.json")
    teacher_state = load_checkpoint(teacher_run / "checkpoint.pt", kind="teacher")["model"]
    l1 = cdd.with_kept(l1_kept_channels(teacher_state, cdd, cdd.kept_counts()))
    assert l1.kept_channels != cdd.kept_channels, "the two criteria must differ for this test to mean anything"
    l1.save(tmp_path / "l1-arch.json")
    trainer, final = fit_tiny_student(tiny_reid_root, tmp_path / "refine", teacher_run, 1,
                                      REFINE + NO_AVERAGE + [f'cdd.refine_from="{tmp_path / "l1-arch.json"}"',
                                                             'cdd.refine_init="teacher"'])
    assert ArchSpec.load(tmp_path / "refine" / "arch.json").kept_channels == l1.kept_channels
    state = load_checkpoint(tmp_path / "refine" / "checkpoint.pt", kind="student")["model"]
    rows = [v for k, v in state.items() if k.endswith("indicator.weight")]
    for weight, kept in zip(rows, l1.kept_channels, strict=True):
        zero = torch.ones(weight.shape[0], dtype=torch.bool)
        zero[list(kept)] = False
        assert torch.count_nonzero(weight[zero]) == 0
        assert torch.count_nonzero(weight[~zero].flatten(1).norm(dim=1)) == len(kept)
    assert final["refine"] == {"from": str(tmp_path / "l1-arch.json"), "init": "teacher", "start_mAP": None,
                               "start_rank1": None}
    full = ArchSpec(**{**cdd.__dict__, "kept_channels": None})
    with pytest.raises(RefineError, match=r"l1-arch\.json: an arch\.json has kept channels but no weights; start "
                                          r"from the teacher"):
        RefineSource.load(tmp_path / "l1-arch.json", full)  # the CDD start needs a run's weights


def test_frozen_rows_stay_zero_through_sgd_with_momentum_and_weight_decay():
    from training.refine import FrozenRows

    weight = torch.nn.Parameter(torch.randn(6, 6))
    masks = [torch.tensor([True, False, True, False, False, True])]
    frozen = FrozenRows(masks)
    frozen.zero_rows([weight])
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        weight.grad = torch.randn(6, 6)  # a non-ReLU path could send gradient into a pruned row
        frozen.clear_grads([weight])
        optimizer.step()
        frozen.zero_rows([weight])
        assert torch.count_nonzero(weight[masks[0]]) == 0
        assert torch.count_nonzero(weight[~masks[0]]) == 3 * 6
