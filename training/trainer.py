"""Training loop for teachers and CDD students.

The step itself (teacher forward -> student forward -> named losses -> backward -> gradient resetting ->
optimizer step) lives in training/step.py; this module is the wiring around it: data, schedule,
checkpoints, evaluation, metrics.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from cdd_common.atomic_file import write_text_atomic
from training.arch_spec import ArchSpec
from training.asymmetric_eval import AsymmetricEvaluator
from training.checkpoint import load_checkpoint, save_checkpoint
from training.collapse_check import lowest_eval_ratio, running_statistics_history
from training.config import TrainConfig
from training.cost import FlopsModel, deployed_cost, reduction_percent
from training.data.dataset import ImageDataset
from training.data.layouts import load_dataset
from training.data.records import DatasetSplits, train_labels
from training.data.samplers import IdentityBalancedBatchSampler
from training.data.transforms import build_eval_transform, build_train_transform
from training.distributed import DistContext
from training.evaluate import evaluate_model
from training.latency_budget import latency_report, warn_if_latency_missed
from training.latency_measure import table_for_run
from training.latency_table import LATENCY_TABLE_FILE, LatencyTable
from training.models.network import ReIDNet, TrainOutput
from training.models.resnet import load_imagenet_weights
from training.models.teacher import init_student_from_teacher, load_teacher
from training.plain_fold import fold_to_plain, measure_folded_statistics
from training.plots import plot_history
from training.pruning import kept_channels, slice_state_dict, slice_teacher_state
from training.refine import FrozenRows, RefineSource
from training.resetting_plan import check_resetting_plan
from training.run_identity import check_same_run
from training.schedule import lr_factor
from training.shrink_pace import shrink_pace
from training.step import build_step
from training.weight_averaging import BN_RECALIBRATION_BATCHES, WeightAverage, recalibrate_batchnorm

__all__ = ["Trainer", "build_trainer", "write_json_atomic"]

log = logging.getLogger("training")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2))


class _TrainForward(nn.Module):
    """Lets DistributedDataParallel hook ``forward_train``."""

    def __init__(self, net: ReIDNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> TrainOutput:
        return self.net.forward_train(x)


class Trainer:
    """Trains the run described by ``cfg`` on ``ctx.device``; ``fit()`` resumes from the run dir when
    ``resume`` and a checkpoint exist, and returns the final metrics dict."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, resume: bool = False) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.out = Path(cfg.run.out_dir)
        self.resume = resume
        if cfg.run.kind not in ("teacher", "student"):
            raise ValueError(f"run.kind must be 'teacher' or 'student', found {cfg.run.kind!r}")
        self.is_student = cfg.run.kind == "student"
        self.splits: DatasetSplits = load_dataset(cfg.data.dataset, cfg.data.root)
        labels, self.label_map = train_labels(self.splits.train)
        self.num_classes = len(self.label_map)
        self._build_data(labels)
        self.teacher = (load_teacher(cfg.cdd.teacher_run, self.num_classes, ctx.device, self._base_spec())
                        if self.is_student else None)
        self.spec, self.teacher_channels = self._build_spec()
        if self.is_student and self.spec.indicators and cfg.cdd.gradient_reset:  # before the resetter is built
            check_resetting_plan(cfg.cdd, cfg.run.epochs, self.steps_per_epoch(),
                                 budgeted=cfg.cdd.flops_budget > 0 or cfg.cdd.latency_budget_ms > 0)
        self.refine = (RefineSource.load(cfg.cdd.refine_from, self.spec, needs_weights=cfg.cdd.refine_init == "cdd")
                       if self.is_student and cfg.cdd.refine_from else None)
        if self.refine is not None and cfg.cdd.refine_form == "plain":  # the slim network itself, as (e) trains
            self.spec = replace(self.refine.spec, indicators=False, num_classes=self.num_classes)
            self.teacher_channels = [torch.tensor(k) for k in self.spec.kept_channels or ()]
        self.net = self._initialise()
        self.module: nn.Module = _TrainForward(self.net)
        if ctx.distributed:
            self.module = DistributedDataParallel(
                self.module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        self.teacher_cost = deployed_cost(self._teacher_spec())
        if self.is_student and self.net.indicators() and not cfg.cdd.gradient_reset and self.refine is None:
            log.warning("cdd.gradient_reset = false: no channel is ever reset (lasso + threshold only)%s",
                        "; cdd.flops_budget / cdd.latency_budget_ms are NOT enforced"
                        if cfg.cdd.flops_budget or cfg.cdd.latency_budget_ms else "")
        self.latency_table = self._latency_table()
        self.step = build_step(cfg, self.net, ctx.device, self.teacher, self.teacher_cost.flops, self.module,
                               self.teacher_channels, self.latency_table, ctx.rank)
        self.optimizer, self.scaler, self.resetter = self.step.optimizer, self.step.scaler, self.step.resetter
        if self.refine is not None and self.spec.indicators:
            self.step.frozen = FrozenRows(self.refine.masks())
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.weight_average = WeightAverage(cfg.optim.average_last, cfg.run.epochs)
        # Students: every evaluation also scores teacher/teacher and student queries on the teacher's gallery.
        self.asymmetric_eval = (AsymmetricEvaluator(self.teacher, self.query_set, self.gallery_set, ctx.device,
                                                    self.splits.protocol, cfg.data.eval_batch_size)
                                if self.teacher is not None else None)

    # ----------------------------------------------------------------------------------------- setup
    def _build_data(self, labels: list[int]) -> None:
        d = self.cfg.data
        size = (d.height, d.width)
        train_tf = build_train_transform(size, d.mean, d.std, d.flip_p, d.pad, d.erasing_p)
        self.train_set = ImageDataset(self.splits.train, labels, train_tf, d.on_error, seed=self.cfg.run.seed)
        self.sampler = IdentityBalancedBatchSampler(labels, d.p, d.k, self.cfg.run.seed, self.ctx.rank,
                                                    self.ctx.world_size)
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=d.num_workers,
                                 pin_memory=self.ctx.device.type == "cuda",
                                 persistent_workers=d.num_workers > 0)
        eval_tf = build_eval_transform(size, d.mean, d.std)
        self.query_set = ImageDataset(self.splits.query, [r.pid for r in self.splits.query], eval_tf, d.on_error)
        self.gallery_set = (None if self.splits.protocol == "class" else
                            ImageDataset(self.splits.gallery, [r.pid for r in self.splits.gallery], eval_tf,
                                         d.on_error))

    def _base_spec(self) -> ArchSpec:
        m, d = self.cfg.model, self.cfg.data
        return ArchSpec(depth=m.depth, width=m.width, last_stride=m.last_stride, embedding_dim=m.embedding_dim,
                        num_classes=self.num_classes, input_size=(d.height, d.width))

    def _teacher_spec(self) -> ArchSpec:
        if self.teacher is not None:
            return self.teacher.spec
        return self._base_spec()

    def _build_spec(self) -> tuple[ArchSpec, list[torch.Tensor] | None]:
        base = self._base_spec()
        if not self.is_student:
            return base, None
        if self.cfg.cdd.static_arch:
            slim = ArchSpec.load(self.cfg.cdd.static_arch)
            spec = replace(slim, indicators=False, num_classes=self.num_classes)
            spec.validate(self.cfg.cdd.static_arch)
            return spec, [torch.tensor(k) for k in (slim.kept_channels or [])] or None
        return replace(base, indicators=True), None

    def _latency_table(self) -> LatencyTable | None:
        """The per-block latency table of a run with ``cdd.latency_budget_ms``: measured now by the main process
        (or reused when resuming), read by the others."""
        c = self.cfg.cdd
        if not (self.is_student and self.net.indicators() and c.gradient_reset and c.latency_budget_ms > 0):
            return None
        resuming = self.resume and (self.out / "checkpoint.pt").is_file()
        table = table_for_run(self.out, self.spec, c, resuming) if self.ctx.is_main else None
        self._barrier()
        return table if table is not None else LatencyTable.load(self.out / LATENCY_TABLE_FILE)

    def _initialise(self) -> ReIDNet:
        torch.manual_seed(self.cfg.run.seed)
        net = ReIDNet(self.spec).to(self.ctx.device)
        init = self.cfg.model.init
        if self.refine is not None:
            self._start_refine(net)
        elif init == "imagenet":
            load_imagenet_weights(net.backbone, self.cfg.model.imagenet_weights)
        elif init == "teacher":
            if self.teacher is None:
                raise ValueError("model.init=teacher needs run.kind=student (a teacher run in cdd.teacher_run)")
            if self.spec.kept_channels is not None:  # static student: prune-then-distill
                net.load_state_dict(slice_teacher_state(self.teacher.state_dict(), self.spec), strict=True)
            else:
                init_student_from_teacher(net, self.teacher)
        elif init != "scratch":
            raise ValueError(f"model.init must be scratch, imagenet or teacher, found {init!r}")
        return net

    def _start_refine(self, net: ReIDNet) -> None:
        """The refine stage's start (`training.refine`): the CDD run's final weights or the teacher's, then
        the pruned indicator rows zeroed."""
        assert self.refine is not None
        if not self.spec.indicators:  # refine_form "plain"
            if self.cfg.cdd.refine_init == "teacher":
                net.load_state_dict(slice_teacher_state(self.teacher.state_dict(), self.spec), strict=True)
            else:
                net.load_state_dict(fold_to_plain(self.refine.state, self.refine.spec), strict=True)
                measure_folded_statistics(net, self.spec, self._statistics_batches())
            return
        if self.cfg.cdd.refine_init == "teacher":
            init_student_from_teacher(net, self.teacher)
        else:
            try:
                net.load_state_dict(self.refine.state, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"{self.refine.run / 'checkpoint.pt'}: weights do not fit this run's network "
                                 f"({str(exc).splitlines()[0]}); refine with the CDD run's own model settings") from exc
        FrozenRows(self.refine.masks()).zero_rows([m.weight for m in net.indicators()])

    def _statistics_batches(self, batches: int = 4, size: int = 64) -> list[torch.Tensor]:
        """Up to ``batches`` batches of ``size`` training images spread over the training set, eval transform
        (deterministic; the training order and its random draws are not touched)."""
        d = self.cfg.data
        records = self.splits.train
        count = min(len(records), batches * size)
        picked = [records[i * len(records) // count] for i in range(count)]
        images = ImageDataset(picked, [0] * count, build_eval_transform((d.height, d.width), d.mean, d.std),
                              d.on_error)
        stacked = [images[i][0] for i in range(count)]
        return [torch.stack(stacked[i:i + size]).to(self.ctx.device) for i in range(0, count, size)]

    # ------------------------------------------------------------------------------------------ step
    def _grg_active(self, epoch: float) -> bool:
        return self.resetter is not None and epoch >= self.cfg.cdd.grg_start_epoch

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, grg_active: bool,
                   steps_left: int | None = None, step_index: int = 0) -> dict[str, float]:
        """One optimisation step (see training/step.py); returns the named loss values."""
        return self.step(images, labels, grg_active, steps_left, step_index)

    def steps_per_epoch(self) -> int:
        steps = len(self.loader)
        return min(steps, self.cfg.run.max_steps_per_epoch) if self.cfg.run.max_steps_per_epoch else steps

    def _set_lr(self, epoch: float) -> float:
        o = self.cfg.optim
        factor = lr_factor(epoch, self.cfg.run.epochs, o.warmup_epochs, o.warmup_factor, o.flat_until,
                           o.min_lr / o.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = o.lr * factor * group["lr_mult"]
        return o.lr * factor

    # ----------------------------------------------------------------------------------------- loop
    def fit(self, stop_after_epochs: int | None = None) -> dict[str, Any]:
        """Train to ``run.epochs`` (resuming if asked), evaluate, write the run dir; returns final metrics.

        ``stop_after_epochs`` ends the process-local run early after that many epochs of this call, as a
        kill after a checkpoint would (returns {}); used to check that resuming is exact."""
        resuming = self.resume and (self.out / "checkpoint.pt").is_file()
        if resuming and (self.out / "config.json").is_file():
            check_same_run(self.out / "config.json", self.cfg.to_dict())  # before config.json is rewritten
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "config.json", self.cfg.to_dict())
        if resuming:
            self._load_state(load_checkpoint(self.out / "checkpoint.pt", kind=self.cfg.run.kind))
        for epoch in range(self.start_epoch, self.cfg.run.epochs):
            if stop_after_epochs is not None and epoch - self.start_epoch >= stop_after_epochs:
                return {}
            entry = self._train_epoch(epoch)
            last = epoch + 1 == self.cfg.run.epochs
            if self.cfg.run.eval_every and ((epoch + 1) % self.cfg.run.eval_every == 0) and not last:
                entry["eval"] = self._evaluate_mid_run(epoch) if self.ctx.is_main else None
            self.history.append(entry)
            self.weight_average.update(self.net, epoch + 1)
            self._save(epoch + 1)
        if self.weight_average.count and not self.weight_average.applied:
            self._apply_weight_average()
            self._save(self.cfg.run.epochs)
        final = self._final() if self.ctx.is_main else {}
        self._barrier()
        return final

    def _recalibration_batches(self, epoch: int) -> Iterator[torch.Tensor]:
        """The first BN_RECALIBRATION_BATCHES training batches of 0-based ``epoch``'s order, as training
        normalised them: with the mixed copy when the run has one (`training.distill_mixup`: every training
        forward sees the batch and its mixed copy together), drawn as at that epoch's first steps.
        Augmentation and mixing are drawn per sample / step and epoch, so reading them does not change what
        training sees next."""
        self.sampler.set_epoch(epoch)  # a resumed run that only has its end left never set the last epoch
        self.train_set.set_epoch(epoch)
        mixup, first = self.step.mixup, epoch * self.steps_per_epoch()
        for step, (images, _, _, _) in enumerate(self.loader):
            if step >= BN_RECALIBRATION_BATCHES:
                return
            images = images.to(self.ctx.device, non_blocking=True)
            yield mixup(images, first + step) if mixup is not None else images

    def _apply_weight_average(self) -> None:
        """Final weights = mean of the averaged epoch ends, reset rows zeroed, BatchNorm recomputed."""
        decay = self.resetter is not None and self.resetter.rule == "decay"
        masks = self.refine.masks() if self.refine is not None else self.resetter.masks if decay else None
        self.weight_average.apply(self.net, self._recalibration_batches(self.cfg.run.epochs - 1),
                                  [m.weight for m in self.net.indicators()], masks)

    def _evaluate_mid_run(self, epoch: int) -> dict[str, Any]:
        """Evaluate the deployable network at the end of 0-based ``epoch``. With run.eval_batchnorm =
        "recompute", on a copy whose BatchNorm statistics are recomputed for the current weights (a
        student's cuts change what each layer receives faster than the running averages follow); the
        running-statistics result is kept under "running_stats" (mAP, rank-1 and, for students, the
        asymmetric score)."""
        net = self._deploy_net()[0]
        running = self._evaluate(net)
        if self.cfg.run.eval_batchnorm == "running":
            return running
        fresh = self._evaluate_recomputed(net, epoch)
        fresh["running_stats"] = _headline(running)
        return fresh

    def _evaluate_recomputed(self, net: nn.Module, epoch: int) -> dict[str, Any]:
        """Evaluate a copy of ``net`` whose BatchNorm statistics are recomputed from 0-based ``epoch``'s
        training batches."""
        twin = copy.deepcopy(net)
        recalibrate_batchnorm(twin, self._recalibration_batches(epoch))
        return self._evaluate(twin)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        self.net.train()
        steps = self.steps_per_epoch()
        total = steps * self.cfg.run.epochs
        sums: dict[str, float] = {}
        seen, start = 0, time.perf_counter()
        bar = tqdm(total=steps, desc=f"{self.cfg.run.kind} epoch {epoch + 1}/{self.cfg.run.epochs}",
                   disable=not (self.cfg.run.progress and self.ctx.is_main), leave=False, dynamic_ncols=True)
        lr = 0.0
        for step, (images, labels, _, _) in enumerate(self.loader):
            if step >= steps:
                break
            progress = epoch + step / steps
            lr = self._set_lr(progress)
            images = images.to(self.ctx.device, non_blocking=True)
            labels = labels.to(self.ctx.device, non_blocking=True)
            index = epoch * steps + step
            stats = self.train_step(images, labels, self._grg_active(progress), total - index - 1, index)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            seen += images.shape[0] * self.ctx.world_size
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{stats['total']:.3f}", img_s=f"{rate:.0f}")
            bar.update()
        bar.close()
        elapsed = time.perf_counter() - start
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "seconds": elapsed, "images_per_s": seen / elapsed}
        entry["loss"] = {k: v / max(steps, 1) for k, v in sums.items() if k != "reset_added"}
        if self.is_student and self.net.indicators():
            entry["pruning"] = self._pruning_state(sums.get("reset_added", 0.0), epoch + 1)
        if self.ctx.is_main:
            log.info("epoch %d/%d loss %.4f %.0f img/s%s", epoch + 1, self.cfg.run.epochs,
                     entry["loss"].get("total", 0.0), entry["images_per_s"],
                     f" kept {entry['pruning']['kept_fraction']:.1%}" if "pruning" in entry else "")
        return entry

    def _scheduled_flops_fraction(self, run_fraction: float) -> float | None:
        """The FLOPs (fraction of the teacher's) the shrink schedule allows at ``run_fraction``; None without
        a FLOPs budget. Without a schedule it is the budget itself once resetting has started."""
        c = self.cfg.cdd
        if self.resetter is None or c.flops_budget <= 0:
            return None
        full = FlopsModel.for_spec(self.spec).flops([p for _, p in self.spec.blocks()]) / self.teacher_cost.flops
        if run_fraction * self.cfg.run.epochs <= c.grg_start_epoch:
            return full
        schedule = self.resetter.schedule
        return c.flops_budget if schedule is None else schedule.allowed(full, c.flops_budget, run_fraction)

    def _pruning_state(self, added: float, epoch_end: int) -> dict[str, Any]:
        spec = self._slim_spec()
        cost = deployed_cost(spec)
        total = sum(p for _, p in self.spec.blocks())
        masks = self.refine.masks() if self.refine is not None else self.resetter.masks if self.resetter else []
        reset = sum(int(m.sum()) for m in masks)
        scheduled = self._scheduled_flops_fraction(epoch_end / self.cfg.run.epochs)
        return {"kept_channels": sum(spec.kept_counts()), "kept_fraction": sum(spec.kept_counts()) / total,
                "reset_channels": reset, "reset_added": int(added), "flops": cost.flops, "params": cost.params,
                "flops_fraction": cost.flops / self.teacher_cost.flops,
                **({"scheduled_flops_fraction": round(scheduled, 6)} if scheduled is not None else {}),
                "flops_reduction": reduction_percent(self.teacher_cost, cost)["flops"],
                **({"estimated_latency_ms": round(self.latency_table.estimate_ms(spec.kept_counts()), 4)}
                   if self.latency_table else {})}

    # -------------------------------------------------------------------------------- deploy + eval
    def _slim_spec(self) -> ArchSpec:
        if not self.net.indicators():
            return self.spec
        if self.refine is not None:
            return self.spec.with_kept([list(k) for k in self.refine.spec.kept_channels or ()])
        weights = [m.weight.detach() for m in self.net.indicators()]
        reset = self.resetter.masks if self.resetter is not None and self.resetter.rule == "decay" else None
        kept = kept_channels(weights, self.cfg.cdd.prune_threshold, self.cfg.cdd.round_to, reset)
        return self.spec.with_kept(kept)

    def _deploy_net(self) -> tuple[nn.Module, ArchSpec]:
        """The network as it will be deployed: slim rebuilt from the spec and sliced weights."""
        spec = self._slim_spec()
        if spec.kept_channels is None or not spec.indicators:
            return self.net, spec
        slim = ReIDNet(spec).to(self.ctx.device)
        slim.load_state_dict(slice_state_dict(self.net.state_dict(), spec), strict=True)
        return slim, spec

    def _compression_report(self, flops: int) -> dict[str, Any]:
        """How the final size came about; logs a warning when a budget was missed (or not enforced)."""
        c = self.cfg.cdd
        report: dict[str, Any] = {"reset_rule": c.reset_rule if self.resetter else "none",
                                  "reset_channels": sum(int(m.sum()) for m in self.resetter.masks)
                                  if self.resetter else 0,
                                  "growth": self.resetter.stop_note if self.resetter else
                                  f"architecture fixed by {self.refine.run}" if self.refine else
                                  "gradient resetting off"}
        latency = (latency_report(self.latency_table, self._slim_spec().kept_counts(), c.latency_budget_ms,
                                  c.round_to) if self.latency_table is not None else None)
        flops_below = None
        if c.flops_budget > 0:
            limit = c.flops_budget * self.teacher_cost.flops
            tolerance = FlopsModel.for_spec(self.spec).max_step(c.round_to)
            report.update({"flops_budget": c.flops_budget, "budget_flops": int(limit),
                           "met": flops <= limit, "within_one_rounding_step": abs(flops - limit) <= tolerance})
            flops_below = flops < limit - tolerance
            latency_below = latency is not None and latency["estimated_latency_ms"] < (
                c.latency_budget_ms - latency["latency_rounding_step_ms"])
            if flops > limit + tolerance or (flops_below and (latency is None or latency_below)):
                log.warning("!!! FLOPs budget MISSED: the exported network costs %s MACs (%.1f%% of the teacher), "
                            "the budget is %s MACs (%.1f%%), more than one rounding step (%s MACs) away. %s",
                            f"{flops:,}", 100 * flops / self.teacher_cost.flops, f"{int(limit):,}",
                            100 * c.flops_budget, f"{tolerance:,}", report["growth"])
        if latency is not None:
            report.update(latency)
            warn_if_latency_missed(latency, flops_below, report["growth"])
        return report

    def _evaluate(self, net: nn.Module) -> dict[str, Any]:
        if self.asymmetric_eval is not None:
            return self.asymmetric_eval(net)
        metrics = evaluate_model(net, self.query_set, self.gallery_set, self.ctx.device, self.splits.protocol,
                                 batch_size=self.cfg.data.eval_batch_size)
        return {k: round(v, 3) for k, v in metrics.as_percent().items()}

    def _final(self) -> dict[str, Any]:
        net, spec = self._deploy_net()
        final: dict[str, Any] = dict(self._evaluate(net))
        if self.cfg.run.eval_batchnorm == "recompute" and self.ctx.is_main:  # measured only, not exported
            fresh = self._evaluate_recomputed(net, self.cfg.run.epochs - 1)
            final["recomputed_stats"] = _headline(fresh)
        cost = deployed_cost(spec)
        final.update({"params": cost.params, "flops": cost.flops, "teacher_params": self.teacher_cost.params,
                      "teacher_flops": self.teacher_cost.flops})
        reduction = reduction_percent(self.teacher_cost, cost)
        final.update({"params_reduction": round(reduction["params"], 2),
                      "flops_reduction": round(reduction["flops"], 2)})
        if self.is_student and self.net.indicators():
            final["compression"] = self._compression_report(cost.flops)
        if self.refine is not None:  # nothing is reset in a refine run: its start, not a collapse check
            final["refine"] = {"from": str(self.refine.run), "init": self.cfg.cdd.refine_init,
                               "start_mAP": self.refine.final.get("mAP"),
                               "start_rank1": self.refine.final.get("rank1")}
        elif "compression" in final:
            teacher_map = next((h["eval"]["teacher"]["mAP"] for h in self.history
                                if isinstance((h.get("eval") or {}).get("teacher"), dict)),
                               (final.get("teacher") or {}).get("mAP"))
            collapse = lowest_eval_ratio(self.history, self.cfg.cdd.grg_start_epoch, teacher_map,
                                         (self.cfg.run.epochs, final["mAP"]))
            running = running_statistics_history(self.history)
            if running is not None:
                collapse["running_stats"] = lowest_eval_ratio(running, self.cfg.cdd.grg_start_epoch, teacher_map,
                                                              (self.cfg.run.epochs, final["mAP"]))
            final["compression"]["collapse_check"] = collapse
            log.info("after resetting started: %d evaluation(s), lowest mAP / best before it = %s (epoch %s)%s",
                     collapse["evaluations_after_reset_start"], collapse["lowest_ratio"], collapse["at_epoch"],
                     "" if running is None else f"; with running BatchNorm statistics "
                     f"{collapse['running_stats']['lowest_ratio']} (epoch {collapse['running_stats']['at_epoch']})")
            pace = shrink_pace(self.history, self.cfg.run.epochs)
            if pace is not None:
                final["compression"]["shrink_pace"] = pace
                log.info("largest cut in one epoch: %.1f%% of the teacher's FLOPs (epoch %s); final size from epoch "
                         "%d of %d", pace["largest_epoch_cut"], pace["at_epoch"], pace["final_size_epoch"],
                         self.cfg.run.epochs)
        spec.save(self.out / "arch.json")
        self._write_metrics(final)
        log.info("final %s", json.dumps(final))
        return final

    # --------------------------------------------------------------------------------- persistence
    def _save(self, next_epoch: int) -> None:
        if not self.ctx.is_main:
            self._barrier()
            return
        state = {"kind": self.cfg.run.kind, "model": self.net.state_dict(), "arch": self.spec.to_dict(),
                 "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "epoch": next_epoch, "history": self.history, "config": self.cfg.to_dict(),
                 "grg": (self.resetter.state_dict(with_memory=next_epoch < self.cfg.run.epochs)
                         if self.resetter else None),
                 "weight_average": self.weight_average.state_dict() if self.weight_average.enabled else None}
        save_checkpoint(self.out / "checkpoint.pt", state)
        self._slim_spec().save(self.out / "arch.json")
        self._write_metrics(None)
        self._barrier()

    def _write_metrics(self, final: dict[str, Any] | None) -> None:
        data: dict[str, Any] = {"kind": self.cfg.run.kind, "epochs": self.history}
        if final is not None:
            data["final"] = final
        write_json_atomic(self.out / "metrics.json", data)
        plot_history(self.history, self.out / "curves.png")

    def _load_state(self, state: dict[str, Any]) -> None:
        saved = state.get("config", {})
        if saved.get("model") != self.cfg.to_dict()["model"]:
            raise ValueError(f"{self.out / 'checkpoint.pt'}: was trained with model config {saved.get('model')}, "
                             "the current config differs; resume with the same config or use a new run.out_dir")
        self.net.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.resetter is not None and state.get("grg") is not None:
            self.resetter.load_state_dict(state["grg"])
        if self.weight_average.enabled and state.get("weight_average") is not None:
            self.weight_average.load_state_dict(state["weight_average"])
        self.history = list(state.get("history", []))
        self.start_epoch = int(state["epoch"])
        log.info("resumed %s at epoch %d", self.out, self.start_epoch)

    def _barrier(self) -> None:
        if self.ctx.distributed:
            torch.distributed.barrier()


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """mAP, rank-1 and (students) the queries-on-the-teacher's-gallery score of an evaluation."""
    return {k: metrics[k] for k in ("mAP", "rank1", "asymmetric") if k in metrics}


def build_trainer(cfg: TrainConfig, resume: bool = False) -> Trainer:
    """The trainer of ``cfg`` on the device (and data-parallel group) it names: what ``cdd-train`` and
    ``make train`` run."""
    from training.distributed import init_distributed

    return Trainer(cfg, init_distributed(cfg.run.device), resume=resume)
