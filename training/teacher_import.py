"""``cdd-train import-teacher``: a ResNet embedding model trained elsewhere as a CDD teacher run dir.

    cdd-train import-teacher --checkpoint model_final.pth --format fast-reid --bnneck --last-stride 1 \\
        --preset demo-teacher --set data.root=data/my-reid --out runs/mine/teacher
    cdd-train import-teacher --head teacher.toml --config my-data.toml

The checkpoint's key names are mapped by `training.teacher_layouts` (torchvision, timm, fast-reid); the head
is described by flags or by a TOML file's ``[teacher]`` table (``checkpoint``, ``format``, ``embedding_dim``,
``bnneck``, ``last_stride``, ``embedding_key``, ``bnneck_key``, ``ignore``, ``ema``; flags win). The data
config (``--preset`` / ``--config`` + ``--set``, as ``cdd-train``) names the user's dataset and the
normalisation the model expects.

It writes a normal teacher run dir (``arch.json``, ``checkpoint.pt``, ``config.json``, ``metrics.json``)
that a CDD student trains from unchanged (``cdd.teacher_run``) and ``cdd-export`` exports. The ID classifier
the student's distillation needs is fitted here: one row per training identity, the normalised mean
embedding of its training images (scaled so logits are 16 x cosine). The imported model is then evaluated on
the dataset's query / gallery split (mAP / CMC in ``metrics.json``), so the user sees it imported correctly.
Exit codes: 0 written; 2 a checkpoint, head or config that does not map (nothing is written).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.arch_spec import ArchSpec, stage_widths
from training.checkpoint import save_checkpoint
from training.config import ConfigError, TrainConfig, load_config
from training.cost import deployed_cost
from training.data.dataset import ImageDataset
from training.data.layouts import load_dataset
from training.data.records import train_labels
from training.data.transforms import build_eval_transform
from training.distributed import resolve_device
from training.evaluate import evaluate_model, extract_features
from training.models.network import ReIDNet
from training.run_folder import RUN_FILES, RunFolderInUse, claim_run_folder
from training.teacher_layouts import FORMATS, HeadLayout, ImportError_, infer_backbone, map_weights, unwrap_state
from training.trainer import write_json_atomic

__all__ = ["main", "import_teacher", "ImportSettings"]

_LOGIT_SCALE = 16.0
_TOML_KEYS = {"checkpoint", "format", *(f.name for f in fields(HeadLayout))}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdd-train import-teacher", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="the model's weights file (.pth / .pt)")
    p.add_argument("--format", choices=FORMATS, help="key naming of the checkpoint")
    p.add_argument("--head", type=Path, help="TOML file with a [teacher] table describing checkpoint and head")
    p.add_argument("--embedding-dim", type=int, help="embedding layer output size; 0 = no embedding layer")
    p.add_argument("--bnneck", action=argparse.BooleanOptionalAction, default=None,
                   help="a BatchNorm (BNNeck) on the embedding (default on)")
    p.add_argument("--last-stride", type=int, choices=(1, 2), help="stride of the last ResNet stage (default 1)")
    p.add_argument("--embedding-key", help="embedding layer key prefix (default fc; fast-reid heads.bottleneck.0)")
    p.add_argument("--bnneck-key", help="key prefix of the BNNeck (format default: bnneck / heads.bottleneck.N)")
    p.add_argument("--ignore", action="append", default=None, metavar="PREFIX", help="drop keys with this prefix")
    p.add_argument("--ema", action="store_true", default=None, help="timm: import state_dict_ema")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="data config preset (default demo-teacher)")
    source.add_argument("--config", help="TOML config file naming the data (as for cdd-train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", help="teacher run dir to write (default: the config's run.out_dir)")
    p.add_argument("--force", action="store_true", help="replace a run already in the run dir (its files are deleted)")
    return p


class ImportSettings:
    """Checkpoint path, format and head, merged from the TOML ``[teacher]`` table and the flags."""

    def __init__(self, checkpoint: Path, fmt: str, head: HeadLayout) -> None:
        self.checkpoint, self.format, self.head = checkpoint, fmt, head

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ImportSettings:
        table: dict[str, Any] = {}
        if args.head is not None:
            try:
                table = dict(tomllib.loads(args.head.read_text()).get("teacher", {}))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ImportError_(f"{args.head}: cannot read the [teacher] table ({exc})") from exc
            unknown = sorted(set(table) - _TOML_KEYS)
            if unknown:
                raise ImportError_(f"{args.head} [teacher]: unknown key(s) {unknown}; valid: {sorted(_TOML_KEYS)}")
        flags = {"checkpoint": args.checkpoint, "format": args.format, "embedding_dim": args.embedding_dim,
                 "bnneck": args.bnneck, "last_stride": args.last_stride, "embedding_key": args.embedding_key,
                 "bnneck_key": args.bnneck_key, "ignore": args.ignore, "ema": args.ema}
        merged = {**table, **{k: v for k, v in flags.items() if v is not None}}
        if "checkpoint" not in merged or "format" not in merged:
            raise ImportError_("give --checkpoint FILE and --format {" + ",".join(FORMATS) + "} (or a --head TOML "
                               "[teacher] table with checkpoint and format)")
        head_values = {k: merged[k] for k in _TOML_KEYS - {"checkpoint", "format"} if k in merged}
        if "ignore" in head_values:
            head_values["ignore"] = tuple(head_values["ignore"])
        head = HeadLayout(**head_values)
        if head.embedding_dim < 0 or head.last_stride not in (1, 2):
            raise ImportError_(f"embedding_dim must be >= 0 and last_stride 1 or 2, found {head.embedding_dim} and "
                               f"{head.last_stride}")
        return cls(Path(merged["checkpoint"]), str(merged["format"]), head)


def _read_checkpoint(path: Path) -> object:
    if not path.is_file():
        raise ImportError_(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled objects beyond tensors and plain containers
        raise ImportError_(f"{path}: cannot be read as weights only ({type(exc).__name__}); re-save just the "
                           "weights, e.g. torch.save(torch.load(f, weights_only=False)['model'], 'weights.pth'), "
                           "then import that file") from exc


def _check_normalisation(cfg: TrainConfig, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                         source: Path) -> None:
    for name, theirs, ours in (("mean", mean, cfg.data.mean), ("std", std, cfg.data.std)):
        if theirs is not None and not np.allclose(theirs, ours, atol=1e-3):
            raise ImportError_(f"{source}: the model normalises with pixel_{name} {list(theirs)} (0..1 scale), the "
                               f"data config has data.{name} = {list(ours)}; add --set 'data.{name}={list(theirs)}'")


def _fit_classifier(net: ReIDNet, cfg: TrainConfig, splits: Any, device: torch.device) -> None:
    """Classifier rows: the normalised class-mean embedding of each identity's training images, divided by
    the median embedding norm and times _LOGIT_SCALE (logits about 16 x cosine)."""
    labels, _ = train_labels(splits.train)
    transform = build_eval_transform((cfg.data.height, cfg.data.width), cfg.data.mean, cfg.data.std)
    train_set = ImageDataset(splits.train, labels, transform, cfg.data.on_error)
    feats, ids, _ = extract_features(net, train_set, device, cfg.data.eval_batch_size)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    unit = feats / np.maximum(norms, 1e-12)
    rows = np.stack([unit[ids == c].mean(0) for c in range(len(set(labels)))])
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    scale = _LOGIT_SCALE / max(float(np.median(norms)), 1e-12)
    with torch.no_grad():
        net.head.classifier.weight.copy_(torch.from_numpy(rows * scale))


def _spec_and_config(args: argparse.Namespace, settings: ImportSettings, depth: int, width: float,
                     num_classes: int) -> tuple[ArchSpec, TrainConfig]:
    channels = stage_widths(width)[4] * (4 if depth >= 50 else 1)
    dim = settings.head.embedding_dim or channels
    model = [f"model.depth={depth}", f"model.width={width}", f"model.last_stride={settings.head.last_stride}",
             f"model.embedding_dim={dim}", 'run.kind="teacher"', 'model.init="scratch"']
    out = [f'run.out_dir="{args.out}"'] if args.out else []
    try:
        cfg = load_config(args.preset or args.config or "demo-teacher", [*args.overrides, *model, *out])
    except ConfigError as exc:
        raise ImportError_(str(exc)) from exc
    spec = ArchSpec(depth=depth, width=width, last_stride=settings.head.last_stride, embedding_dim=dim,
                    num_classes=num_classes, input_size=(cfg.data.height, cfg.data.width))
    spec.validate()
    return spec, cfg


def import_teacher(args: argparse.Namespace) -> tuple[dict[str, Any], Path, ArchSpec]:
    """Map, check, fit the classifier, evaluate and write the run dir; returns (final metrics, run dir, spec).
    Raises ImportError_ / ConfigError / FileNotFoundError before anything is written."""
    settings = ImportSettings.from_args(args)
    source = settings.checkpoint
    state = unwrap_state(_read_checkpoint(source), settings.format, settings.head, str(source))
    prefix = "backbone." if settings.format == "fast-reid" else ""
    depth, width = infer_backbone(state, prefix, str(source))
    probe = load_config(args.preset or args.config or "demo-teacher", list(args.overrides))
    splits = load_dataset(probe.data.dataset, probe.data.root)
    num_classes = len(train_labels(splits.train)[1])
    spec, cfg = _spec_and_config(args, settings, depth, width, num_classes)
    earlier = [name for name in RUN_FILES if (Path(cfg.run.out_dir) / name).exists()]
    if earlier and not args.force:  # refused before the work, not after
        raise ImportError_(f"{cfg.run.out_dir} already holds a run ({', '.join(earlier)}); pass --force to replace "
                           "it or --out NEW to write another folder")
    net = ReIDNet(spec)
    shapes = {k: v.shape for k, v in net.state_dict().items() if k.startswith("backbone.")}
    mapped = map_weights(state, settings.format, settings.head, shapes, depth, width, str(source))
    _check_normalisation(cfg, mapped.pixel_mean, mapped.pixel_std, source)
    result = net.load_state_dict(mapped.state, strict=False)
    if result.unexpected_keys or result.missing_keys != ["head.classifier.weight"]:
        raise ImportError_(f"{source}: internal mapping error (missing {result.missing_keys}, unexpected "
                           f"{result.unexpected_keys}); please report it")
    device = resolve_device(cfg.run.device)
    net.to(device).eval()
    _fit_classifier(net, cfg, splits, device)
    transform = build_eval_transform((cfg.data.height, cfg.data.width), cfg.data.mean, cfg.data.std)
    query = ImageDataset(splits.query, [r.pid for r in splits.query], transform, cfg.data.on_error)
    gallery = (None if splits.protocol == "class" else
               ImageDataset(splits.gallery, [r.pid for r in splits.gallery], transform, cfg.data.on_error))
    metrics = evaluate_model(net, query, gallery, device, splits.protocol, batch_size=cfg.data.eval_batch_size)
    cost = deployed_cost(spec)
    imported = {"checkpoint": str(source), "format": settings.format, "head": asdict(settings.head),
                "dropped_keys": mapped.dropped}
    final = {**{k: round(v, 3) for k, v in metrics.as_percent().items()}, "params": cost.params,
             "flops": cost.flops, "teacher_params": cost.params, "teacher_flops": cost.flops,
             "params_reduction": 0.0, "flops_reduction": 0.0, "imported": imported}
    out = Path(cfg.run.out_dir)
    try:
        claim_run_folder(out, resume=False, force=args.force)
    except RunFolderInUse as exc:
        raise ImportError_(str(exc).replace("--resume to continue it, ", "")) from exc
    _write_run_dir(out, net.cpu(), spec, cfg, final, imported)
    return final, out, spec


def _write_run_dir(out: Path, net: ReIDNet, spec: ArchSpec, cfg: TrainConfig, final: dict[str, Any],
                   imported: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoint.pt", {"kind": "teacher", "model": net.state_dict(), "arch": spec.to_dict(),
                                            "epoch": 0, "history": [], "config": cfg.to_dict(),
                                            "imported_from": imported})
    write_json_atomic(out / "config.json", cfg.to_dict())
    write_json_atomic(out / "metrics.json", {"kind": "teacher", "epochs": [], "final": final})
    spec.save(out / "arch.json")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        final, out, spec = import_teacher(args)
    except (ImportError_, ConfigError, FileNotFoundError) as exc:
        print(f"cdd-train import-teacher: {exc}", file=sys.stderr)
        return 2
    print(f"imported ResNet-{spec.depth} (width {spec.width}, last stride {spec.last_stride}, embedding "
          f"{spec.embedding_dim}) from {final['imported']['checkpoint']} into {out}: mAP {final['mAP']:.2f}%  "
          f"rank-1 {final['rank1']:.2f}%")
    print(f"train a CDD student from it: cdd-train --preset demo-student --set 'cdd.teacher_run=\"{out}\"' "
          f"--set model.depth={spec.depth} --set model.width={spec.width} --set model.last_stride={spec.last_stride} "
          f"--set model.embedding_dim={spec.embedding_dim} (and the same data settings)")
    return 0
