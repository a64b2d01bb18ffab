"""`cdd-train import-teacher`: checkpoints written here in torchvision, timm and fast-reid naming from a model
built here import to the same embeddings, are evaluated, train a tiny CDD student, and anything that does
not map is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from export.run_dir import load_run_dir
from tiny_training import fit_tiny_student
from training.__main__ import main as cdd_train
from training.arch_spec import ArchSpec
from training.models.resnet import ResNetBackbone
from training.models.teacher import load_teacher

DIM = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _ForeignModel(nn.Module):
    """embedding = [BNNeck](W avgpool(ResNet-18 x0.125 (x)) [+ b]): what another project trained."""

    def __init__(self, embedding: bool, bias: bool, bnneck: bool, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = ResNetBackbone(ArchSpec(depth=18, width=0.125, last_stride=1, input_size=(64, 32)))
        channels = self.backbone.out_channels
        self.embed = nn.Linear(channels, DIM, bias=bias) if embedding else None
        self.neck = nn.BatchNorm1d(DIM if embedding else channels) if bnneck else None
        for module in self.modules():  # trained-looking statistics, not the identity defaults
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.3, 0.3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x).mean(dim=(2, 3))
        x = self.embed(x) if self.embed is not None else x
        return self.neck(x) if self.neck is not None else x


def _torchvision(model: _ForeignModel) -> dict:
    state = dict(model.backbone.state_dict())
    state.update({f"fc.{k}": v for k, v in model.embed.state_dict().items()})
    state.update({f"bnneck.{k}": v for k, v in model.neck.state_dict().items()})
    return state


def _timm(model: _ForeignModel) -> dict:
    state = {**model.backbone.state_dict(), **{f"fc.{k}": v for k, v in model.embed.state_dict().items()}}
    return {"epoch": 7, "arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in state.items()},
            "version": 2}


def _fast_reid(model: _ForeignModel, num_classes: int = 11) -> dict:
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    neck_index = 0
    if model.embed is not None:
        state["heads.bottleneck.0.weight"] = model.embed.weight.detach()[:, :, None, None].clone()
        neck_index = 1
    state.update({f"heads.bottleneck.{neck_index}.{k}": v for k, v in model.neck.state_dict().items()})
    dim = model.neck.num_features
    state["heads.weight"] = torch.randn(num_classes, dim)  # their classifier: dropped
    state["pixel_mean"] = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    state["pixel_std"] = torch.tensor(STD).view(1, 3, 1, 1) * 255
    return {"model": state, "iteration": 1000}


CASES = {
    "torchvision": (dict(embedding=True, bias=True, bnneck=True), _torchvision,
                    ["--embedding-dim", str(DIM), "--bnneck"]),
    "timm": (dict(embedding=True, bias=True, bnneck=False), _timm, ["--embedding-dim", str(DIM), "--no-bnneck"]),
    "fast-reid": (dict(embedding=True, bias=False, bnneck=True), _fast_reid, ["--embedding-dim", str(DIM)]),
}


def _data_args(root: Path, out: Path) -> list[str]:
    return ["--preset", "demo-teacher", "--set", f'data.root="{root}"', "--set", "data.height=64",
            "--set", "data.width=32", "--set", 'run.device="cpu"', "--set", "data.eval_batch_size=32",
            "--out", str(out)]


def _import(tmp_path: Path, root: Path, fmt: str, checkpoint: object, flags: list[str]) -> tuple[int, Path]:
    path, out = tmp_path / f"{fmt}.pth", tmp_path / f"teacher-{fmt}"
    torch.save(checkpoint, path)
    code = cdd_train(["import-teacher", "--checkpoint", str(path), "--format", fmt, *flags, *_data_args(root, out)])
    return code, out


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_each_naming_imports_to_the_same_embeddings(fmt: str, tiny_reid_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    kwargs, write, flags = CASES[fmt]
    model = _ForeignModel(seed=1, **kwargs)
    code, out = _import(tmp_path, tiny_reid_root, fmt, write(model), flags)
    assert code == 0, capsys.readouterr().err
    assert f"into {out}: mAP" in capsys.readouterr().out
    teacher = load_teacher(out, num_classes=8)
    images = torch.randn(5, 3, 64, 32)
    with torch.no_grad():
        error = (teacher(images) - model(images)).abs().max().item()
    assert error <= 1e-5, error
    metrics = json.loads((out / "metrics.json").read_text())["final"]
    assert metrics["mAP"] > 0 and metrics["imported"]["format"] == fmt
    rows = teacher.head.classifier.weight  # fitted: one scaled unit prototype per training identity
    norms = rows.norm(dim=1)
    assert rows.shape == (8, teacher.spec.embedding_dim) and torch.allclose(norms, norms[0].expand(8), rtol=1e-4)
    assert len({tuple(r.round(decimals=4).tolist()) for r in rows}) == 8
    if fmt == "fast-reid":
        assert metrics["imported"]["dropped_keys"] == ["heads.weight", "pixel_mean", "pixel_std"]


def test_a_bnneck_only_fast_reid_model_and_a_student_trained_from_it(tiny_reid_root: Path, tmp_path: Path) -> None:
    model = _ForeignModel(embedding=False, bias=False, bnneck=True, seed=2)
    code, out = _import(tmp_path, tiny_reid_root, "fast-reid", _fast_reid(model), ["--embedding-dim", "0"])
    assert code == 0
    teacher = load_teacher(out, num_classes=8)
    images = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        assert (teacher(images) - model(images)).abs().max().item() <= 1e-5
    assert teacher.spec.embedding_dim == model.backbone.out_channels == 64
    run = load_run_dir(out)  # what cdd-export reads
    assert run.kind == "teacher" and run.metrics["mAP"] > 0 and run.mean == MEAN
    trainer, final = fit_tiny_student(tiny_reid_root, tmp_path / "student", out, epochs=2,
                                      extra=["model.embedding_dim=64"])
    assert final["teacher_flops"] == json.loads((out / "metrics.json").read_text())["final"]["flops"]
    losses = trainer.history[-1]["loss"]  # distilled from the imported teacher: its logits and descriptors
    assert losses["kd"] > 0 and losses["feature"] > 0 and (tmp_path / "student" / "checkpoint.pt").is_file()


def _refused(tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str], fmt: str, checkpoint: object,
             flags: list[str]) -> str:
    code, out = _import(tmp_path, root, fmt, checkpoint, flags)
    assert code == 2 and not out.exists()
    return capsys.readouterr().err


def test_what_does_not_map_is_refused_by_name(tiny_reid_root: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    model = _ForeignModel(embedding=True, bias=False, bnneck=True, seed=3)
    flags = ["--embedding-dim", str(DIM)]
    se = _fast_reid(model)
    se["model"]["backbone.layer1.0.se.fc1.weight"] = torch.zeros(2, 8)
    err = _refused(tmp_path, tiny_reid_root, capsys, "fast-reid", se, flags)
    assert "backbone.layer1.0.se.fc1.weight" in err and "squeeze-excitation" in err
    gem = _fast_reid(model)
    gem["model"]["heads.pool_layer.p"] = torch.tensor([3.0])
    assert "GeM pooling" in _refused(tmp_path, tiny_reid_root, capsys, "fast-reid", gem, flags)
    missing = _fast_reid(model)
    del missing["model"]["backbone.layer2.1.bn2.weight"]
    assert "missing key(s) ['backbone.layer2.1.bn2.weight']" in _refused(
        tmp_path, tiny_reid_root, capsys, "fast-reid", missing, flags)
    err = _refused(tmp_path, tiny_reid_root, capsys, "fast-reid", _fast_reid(model), ["--embedding-dim", "48"])
    assert f"heads.bottleneck.0.weight has shape ({DIM}, 64), expected (48, 64)" in err
    err = _refused(tmp_path, tiny_reid_root, capsys, "torchvision", _fast_reid(model), flags)
    assert "no tensor state_dict found" in err or "no ResNet backbone" in err
    shifted = _fast_reid(model)
    shifted["model"]["pixel_mean"] = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1) * 255
    assert "add --set 'data.mean=[0.5, 0.5, 0.5]'" in _refused(
        tmp_path, tiny_reid_root, capsys, "fast-reid", shifted, flags)


def test_the_head_can_come_from_toml(tiny_reid_root: Path, tmp_path: Path) -> None:
    model = _ForeignModel(embedding=True, bias=True, bnneck=True, seed=4)
    torch.save(_torchvision(model), tmp_path / "weights.pth")
    (tmp_path / "head.toml").write_text(
        f'[teacher]\ncheckpoint = "{tmp_path / "weights.pth"}"\nformat = "torchvision"\nembedding_dim = {DIM}\n'
        'bnneck = true\nlast_stride = 1\n')
    out = tmp_path / "teacher"
    assert cdd_train(["import-teacher", "--head", str(tmp_path / "head.toml"), *_data_args(tiny_reid_root, out)]) == 0
    images = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        assert (load_teacher(out, num_classes=8)(images) - model(images)).abs().max().item() <= 1e-5
    (tmp_path / "bad.toml").write_text('[teacher]\nformat = "timm"\nneck = true\n')
    assert cdd_train(["import-teacher", "--head", str(tmp_path / "bad.toml"), *_data_args(tiny_reid_root, out)]) == 2


def test_an_existing_run_is_kept_unless_forced(tiny_reid_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    kwargs, write, flags = CASES["timm"]
    first, second = _ForeignModel(seed=5, **kwargs), _ForeignModel(seed=6, **kwargs)
    code, out = _import(tmp_path, tiny_reid_root, "timm", write(first), flags)
    assert code == 0
    before = (out / "checkpoint.pt").read_bytes()
    code, _ = _import(tmp_path, tiny_reid_root, "timm", write(second), flags)
    assert code == 2 and "already holds a run" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before
    code, _ = _import(tmp_path, tiny_reid_root, "timm", write(second), [*flags, "--force"])
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert code == 0 and (load_teacher(out, num_classes=8)(images) - second(images)).abs().max().item() <= 1e-5
