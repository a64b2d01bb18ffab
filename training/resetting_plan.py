"""Checks, at the start of a CDD run, that its gradient-resetting settings fit the run's length.

A run whose resetting can never start, or whose reset rows could never reach zero before the end, would
train for its whole length and then deliver a full-size "student"; :func:`check_resetting_plan` refuses it
before the first step, naming the settings and a value that works.
"""

from __future__ import annotations

import math

from training.config import CDDConfig, ConfigError

__all__ = ["check_resetting_plan", "first_step_at"]


def first_step_at(run_fraction: float, total: int) -> int:
    """The index of the first of ``total`` steps whose run fraction ``index / total`` (what the training step
    passes to the shrink schedule) is at least ``run_fraction``; exact where ``run_fraction * total`` rounds."""
    step = math.ceil(run_fraction * total)
    while step > 0 and (step - 1) / total >= run_fraction:
        step -= 1
    while step / total < run_fraction:
        step += 1
    return step


def check_resetting_plan(cdd: CDDConfig, epochs: int, steps_per_epoch: int, budgeted: bool) -> None:
    """Raise ConfigError when resetting cannot do its job in a run of ``epochs`` x ``steps_per_epoch`` steps:
    it starts at or after the end; with the ``decay`` rule, fewer steps are left after it starts (or, when a
    ``budgeted`` run is paced by ``cdd.shrink_curve``, after ``cdd.shrink_end``) than ``cdd.reset_decay_steps``
    needs to bring a reset row to zero (the decay rule admits a channel only while at least that many steps
    follow the step that admits it)."""
    if cdd.grg_start_epoch >= epochs:
        raise ConfigError(
            f"cdd.grg_start_epoch = {cdd.grg_start_epoch:g} is not before the end of the run (run.epochs = "
            f"{epochs}): gradient resetting would never start and the student would keep its full size; set "
            f"cdd.grg_start_epoch to about {max(epochs / 10, 0):g} (a tenth of the run)")
    total = epochs * steps_per_epoch
    start_step = math.ceil(cdd.grg_start_epoch * steps_per_epoch)
    paced = budgeted and cdd.shrink_curve != "none"
    if paced and cdd.shrink_end <= cdd.grg_start_epoch / epochs:
        raise ConfigError(
            f"cdd.shrink_end = {cdd.shrink_end:g} of the run is not after resetting starts (cdd.grg_start_epoch = "
            f"{cdd.grg_start_epoch:g} of {epochs} epochs = {cdd.grg_start_epoch / epochs:.3f}); set "
            f"cdd.grg_start_epoch to about {epochs / 10:g} (a tenth of the run)")
    if cdd.reset_rule != "decay":
        return
    if paced:
        after = total - first_step_at(cdd.shrink_end, total) - 1
        if after < cdd.reset_decay_steps:
            raise ConfigError(
                f"cdd.reset_decay_steps = {cdd.reset_decay_steps} is longer than the {after} step(s) left after the "
                f"step at which the shrink schedule reaches the budget (cdd.shrink_end = {cdd.shrink_end:g} of "
                f"{total} steps): the last channels reset could not reach zero, and the budget would be missed; "
                f"{_decay_fix(cdd, total, after, cdd.grg_start_epoch / epochs)}")
        return
    if total - start_step <= cdd.reset_decay_steps:
        raise ConfigError(
            f"cdd.reset_decay_steps = {cdd.reset_decay_steps} is not shorter than the {total - start_step} step(s) "
            f"from the start of resetting (epoch {cdd.grg_start_epoch:g}) to the end of the run ({epochs} epochs x "
            f"{steps_per_epoch} steps): no channel could be reset and reach zero; set cdd.reset_decay_steps = "
            f"{max(1, (total - start_step) // 3)}")


def _decay_fix(cdd: CDDConfig, total: int, after: int, start: float) -> str:
    """A setting that leaves the decay rule its steps after the shrink schedule's end (``after`` steps are left
    after it now; resetting starts at run fraction ``start``)."""
    if after >= 1:
        return f"set cdd.reset_decay_steps = {max(1, after // 2)} or lower cdd.shrink_end"
    latest_end = math.floor(100 * (total - 1 - cdd.reset_decay_steps) / total) / 100
    if latest_end > start:
        return f"set cdd.shrink_end to at most {latest_end:g}"
    end = math.floor(100 * (start + 1) / 2) / 100  # halfway from the start of resetting to the end of the run
    left = total - first_step_at(end, total) - 1
    if end > start and left >= 1:
        return f"set cdd.shrink_end = {end:g} and cdd.reset_decay_steps = {max(1, left // 2)}"
    return "train for more epochs (run.epochs) or use cdd.reset_rule = \"reference\""
