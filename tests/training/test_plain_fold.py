"""The refine stage in the plain slim form: a CDD student's conv, BN and indicator folded into one conv of the kept
channels and a BN (`training.plain_fold`), trained as the slim network itself and exported like any run."""

import json
from dataclasses import replace

import pytest
import torch

from tiny_training import fit_tiny_student
from training.arch_spec import ArchSpec
from training.checkpoint import load_checkpoint
from training.models.network import ReIDNet
from training.plain_fold import fold_to_plain, measure_folded_statistics
from training.pruning import block_prefixes

REFINE = ["cdd.gradient_reset=false", "loss.lasso_lambda=0", 'cdd.refine_form="plain"']


def _cdd(student_run):
    spec = ArchSpec.load(student_run / "arch.json")
    state = load_checkpoint(student_run / "checkpoint.pt", kind="student")["model"]
    full = ReIDNet(replace(spec, kept_channels=None))
    full.load_state_dict(state)
    return spec, state, full.eval()


def test_the_folded_plain_network_computes_what_the_cdd_student_computes(student_run):
    spec, state, full = _cdd(student_run)
    assert any(len(k) < p for (_, p), k in zip(spec.blocks(), spec.kept_channels, strict=True))
    plain_spec = replace(spec, indicators=False)
    plain = ReIDNet(plain_spec)
    plain.load_state_dict(fold_to_plain(state, spec), strict=True)
    assert not list(plain.indicators())
    x = torch.randn(6, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), full(x), atol=1e-4)
    with pytest.raises(ValueError, match="indicators = true"):
        fold_to_plain(state, plain_spec)


def test_measured_statistics_are_the_folded_convs_own_and_leave_the_eval_function_alone(student_run):
    spec, state, full = _cdd(student_run)
    plain_spec = replace(spec, indicators=False)
    plain = ReIDNet(plain_spec)
    plain.load_state_dict(fold_to_plain(state, spec))
    batches = [torch.randn(8, 3, 64, 32) for _ in range(3)]
    prefix = block_prefixes(plain_spec)[2]
    seen = []  # an independent record of what the folded conv of block 2 produces on the same batches
    handle = plain.get_submodule(prefix + "conv1").register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    assert measure_folded_statistics(plain, plain_spec, batches) == 3
    handle.remove()
    outputs = torch.cat([o.permute(1, 0, 2, 3).flatten(1) for o in seen], dim=1).double()
    bn = plain.get_submodule(prefix + "bn1")
    assert torch.allclose(bn.running_mean.double(), outputs.mean(dim=1), atol=1e-4)
    assert torch.allclose(bn.running_var.double(), outputs.var(dim=1, unbiased=False), rtol=1e-3, atol=1e-5)
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), full(x), atol=1e-4)
    with torch.no_grad():
        bn.weight.mul_(1.5)  # as training would move it: the shift can no longer be read off the BN
    with pytest.raises(ValueError, match="as fold_to_plain left them"):
        measure_folded_statistics(plain, plain_spec, batches)


def test_unfolding_a_plain_student_gives_the_cdd_form_of_the_same_network(student_run):
    from training.plain_fold import unfold_plain
    from training.pruning import slice_state_dict

    spec, state, _ = _cdd(student_run)
    plain_spec = replace(spec, indicators=False)
    plain = ReIDNet(plain_spec)
    plain.load_state_dict(fold_to_plain(state, spec))
    with torch.no_grad():  # any BN state, not only a folded one
        for module in plain.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
                module.bias.normal_()
    full_state = unfold_plain(plain.state_dict(), plain_spec)
    slim = ReIDNet(spec)  # CDD's deploy form: full-width conv and BN, the kept indicator rows
    slim.load_state_dict(slice_state_dict(full_state, spec), strict=True)
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(slim.eval()(x), plain.eval()(x), atol=1e-5)
    with pytest.raises(ValueError, match="indicators = false"):
        unfold_plain(state, spec)


def test_a_plain_refine_trains_the_slim_network_with_cdds_channels_and_exports(tiny_reid_root, teacher_run,
                                                                               student_run, tmp_path):
    from export.__main__ import main as export_main

    source = ArchSpec.load(student_run / "arch.json")
    out = tmp_path / "refine"
    trainer, final = fit_tiny_student(tiny_reid_root, out, teacher_run, 1,
                                      REFINE + [f'cdd.refine_from="{student_run}"'])
    refined = ArchSpec.load(out / "arch.json")
    assert (refined.indicators, refined.kept_channels) == (False, source.kept_channels)
    assert final["flops"] == json.loads((student_run / "metrics.json").read_text())["final"]["flops"]
    assert final["refine"]["init"] == "cdd" and not list(trainer.net.indicators())
    assert export_main(["--run", str(out), "--out", str(tmp_path / "bundle"), "--tensorrt", "off"]) == 0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["cost"]["student"]["flops"] == final["flops"]
