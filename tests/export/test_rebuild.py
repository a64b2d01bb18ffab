"""Rebuilding the slim network from a run dir, and the errors for run dirs that cannot be exported."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_runs import ONE_CHANNEL_BLOCK, TinyRuns

from export.errors import RunDirError
from export.rebuild import build_reference, build_slim, load_strict
from export.run_dir import load_run_dir
from training.pruning import block_prefixes


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def _images(seed: int = 0, n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, 64, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["student18", "student50"])
def test_slim_equals_full_width_with_pruned_rows_zeroed(tiny_run_dir: TinyRuns, name: str) -> None:
    run = load_run_dir(getattr(tiny_run_dir, name))
    # Make the pruned rows large, so "zeroed" vs "not zeroed" is a visible difference.
    state = dict(run.state_dict)
    for prefix, kept in zip(block_prefixes(run.spec), run.spec.kept_channels, strict=True):
        weight = state[prefix + "indicator.weight"].clone()
        dropped = sorted(set(range(weight.shape[0])) - set(kept))
        weight[dropped] = torch.randn(len(dropped), *weight.shape[1:], generator=torch.Generator().manual_seed(1))
        state[prefix + "indicator.weight"] = weight
    run = replace(run, state_dict=state)
    slim, reference = build_slim(run), build_reference(run)
    unzeroed = load_strict(replace(run.spec, kept_channels=None), state, "test")
    x = _images()
    with torch.no_grad():
        out, ref, raw = slim(x), reference(x), unzeroed(x)
    scale = ref.abs().max()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(scale))
    assert (out - raw).abs().max() > 1e-3 * scale, "the reference must be the zeroed full-width net"
    assert not slim.training and not reference.training


def test_slim_network_has_the_kept_widths(tiny_run_dir: TinyRuns) -> None:
    run = load_run_dir(tiny_run_dir.student50)
    slim = build_slim(run)
    blocks = slim.backbone.blocks()
    assert [b.indicator.out_channels for b in blocks] == run.spec.kept_counts()
    assert blocks[ONE_CHANNEL_BLOCK].indicator.weight.shape[0] == 1
    assert blocks[ONE_CHANNEL_BLOCK].conv3.in_channels == 1
    assert slim.head.classifier is None  # the ID classifier is never deployed


def test_teacher_rebuilds_full_width(tiny_run_dir: TinyRuns) -> None:
    run = load_run_dir(tiny_run_dir.teacher)
    assert run.kind == "teacher" and run.spec.kept_channels is None and not run.spec.indicators
    net = build_slim(run)
    x = _images(n=2)
    with torch.no_grad():
        torch.testing.assert_close(net(x), build_reference(run)(x))


def test_older_checkpoint_schema_is_a_clear_error(tiny_run_dir: TinyRuns, tmp_path: Path) -> None:
    run = _copy(tiny_run_dir.student18, tmp_path)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["schema_version"]
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(RunDirError, match=r"checkpoint\.pt: no schema_version.*cdd-train"):
        load_run_dir(run)
    ckpt["schema_version"] = 0
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(RunDirError, match=r"schema_version 0, this cdd-export reads 1"):
        load_run_dir(run)


@pytest.mark.parametrize("missing", ["arch.json", "checkpoint.pt", "config.json", "metrics.json"])
def test_missing_file_is_named(tiny_run_dir: TinyRuns, tmp_path: Path, missing: str) -> None:
    run = _copy(tiny_run_dir.student18, tmp_path)
    (run / missing).unlink()
    with pytest.raises(RunDirError, match=rf"{missing}: .*not found.*cdd-train"):
        load_run_dir(run)


def _edit_arch(run: Path, **changes: object) -> None:
    data = json.loads((run / "arch.json").read_text())
    data.update(changes)
    (run / "arch.json").write_text(json.dumps(data))


def test_arch_that_disagrees_with_the_checkpoint_arch(tiny_run_dir: TinyRuns, tmp_path: Path) -> None:
    run = _copy(tiny_run_dir.student18, tmp_path)
    _edit_arch(run, embedding_dim=32)
    with pytest.raises(RunDirError, match=r"embedding_dim is 32 but .*checkpoint\.pt was trained with 16"):
        load_run_dir(run)


def test_kept_index_out_of_range(tiny_run_dir: TinyRuns, tmp_path: Path) -> None:
    run = _copy(tiny_run_dir.student18, tmp_path)
    kept = json.loads((run / "arch.json").read_text())["kept_channels"]
    kept[0] = [0, 999]
    _edit_arch(run, kept_channels=kept)
    with pytest.raises(RunDirError, match=r"arch\.json.*kept indices must be sorted, unique and in \[0, 16\)"):
        load_run_dir(run)


def test_checkpoint_weights_of_another_shape(tiny_run_dir: TinyRuns, tmp_path: Path) -> None:
    """The checkpoint holds an already-slim indicator (kept count != full width): a clear mismatch error."""
    run = _copy(tiny_run_dir.student18, tmp_path)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    key = "backbone.layer1.0.indicator.weight"
    ckpt["model"][key] = ckpt["model"][key][:3].clone()
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(RunDirError, match=r"do not match the architecture spec.*layer1\.0\.indicator\.weight"):
        build_slim(load_run_dir(run))


def test_input_size_the_network_cannot_take(tiny_run_dir: TinyRuns, tmp_path: Path) -> None:
    run = _copy(tiny_run_dir.student18, tmp_path)
    _edit_arch(run, input_size=[16, 8])
    with pytest.raises(RunDirError, match=r"arch\.json: input_size \(16, 8\) is too small"):
        load_run_dir(run)


def test_teacher_kind_with_kept_channels_is_rejected(tiny_run_dir: TinyRuns, tmp_path: Path) -> None:
    run = _copy(tiny_run_dir.student18, tmp_path)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["kind"] = "teacher"
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(RunDirError, match=r"a teacher run has indicators=false and kept_channels=null"):
        load_run_dir(run)


def test_config_without_normalisation_is_named(tiny_run_dir: TinyRuns, tmp_path: Path) -> None:
    run = _copy(tiny_run_dir.student18, tmp_path)
    config = json.loads((run / "config.json").read_text())
    del config["data"]["std"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match=r"config\.json: required field 'data\.std' is missing"):
        load_run_dir(run)
