"""The mutants of `make mutation` (tests/tools/mutation.py): one deliberate bug each in a mechanism users rely on,
anchored by an exact code snippet, with the tests that should notice it.

Each ``find`` must occur exactly once in ``path``; a mutant whose snippet is gone is reported ``stale``
(re-anchor it after a refactor). ``note`` says what the bug would do to a user.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MUTANTS", "Mutant"]


@dataclass(frozen=True)
class Mutant:
    name: str
    mechanism: str
    path: str
    find: str
    replace: str
    tests: tuple[str, ...]
    note: str


_GRG = ("tests/training/test_grg.py", "tests/training/test_reset_decay_residue.py")
_STEP = ("tests/training/test_distill_mixup.py", "-k", "step or clean_batch")
_SCHEDULE = ("tests/training/test_shrink_schedule.py", "-k", "not real_run")
_SCHEDULE_RUN = ("tests/training/test_shrink_schedule_run.py",)
_PRUNING = ("tests/training/test_pruning.py", "tests/export/test_rebuild.py")
_ADMISSION = ("tests/serving/test_overload.py",)
_AUTH = ("tests/serving/test_access_control.py",)
_PIXELS = ("tests/serving/test_preprocess.py", "tests/serving/test_decode_fuzz.py")
_BUNDLE = ("tests/serving/test_bundle_files.py", "tests/export/test_pipeline.py", "-k",
           "tamper or swapped or listed or escape or missing")
# tests/serving/test_write_log.py (the write-log rewrite, observes os.fsync) joins the list once it exists
_WRITE_LOG_TESTS = ("tests/serving/test_write_log.py",)
_DURABLE = ("tests/serving/test_durable_gallery.py", "tests/serving/test_server_durability.py", *_WRITE_LOG_TESTS)
_LOCKS = ("tests/serving/test_rw_lock.py", "tests/serving/test_durable_gallery.py")

MUTANTS: tuple[Mutant, ...] = (
    # gradient resetting: the reset rule, the step mask, the budget and the schedule
    Mutant("reset rows keep their task gradient", "gradient resetting", "training/grg.py",
           "        grad[mask] = 0\n", "", _GRG, "reset channels keep learning from the task loss"),
    Mutant("step mask is a union, not an intersection", "gradient resetting", "training/grg.py",
           "return candidate.flatten(0, 1).all(dim=0)", "return candidate.flatten(0, 1).any(dim=0)", _GRG,
           "a channel unimportant for one sample is reset for all"),
    Mutant("momentum of reset rows is kept", "gradient resetting", "training/grg.py",
           "                buffer.view(buffer.shape[0], -1)[mask] = 0\n", "                pass\n", _GRG,
           "momentum moves reset rows after their gradient was cut"),
    Mutant("decayed rows never reach exact zero", "gradient resetting", "training/grg.py",
           "torch.where(norm > step * 1.001, before * factor, torch.zeros_like(before))", "before * factor", _GRG,
           "a float residue keeps pruned rows alive at export"),
    Mutant("reset set keeps growing past the decay deadline", "reset schedule", "training/grg.py",
           "steps_left is not None and steps_left < self.decay_steps:",
           "steps_left is not None and steps_left < 0:", _GRG + ("tests/training/test_trainer.py",),
           "rows reset near the end are not yet zero when training stops"),
    Mutant("budget keeps admitting after it is met", "reset budget", "training/budget.py",
           "        if all(budget.met_resets(resets) for budget in budgets):\n            break\n", "",
           _GRG + ("tests/training/test_latency_budget.py", "-k", "not run and not resume and not exported"),
           "the network is pruned far below the FLOPs / latency budget"),
    Mutant("budget admits the largest contributions first", "reset budget", "training/budget.py",
           "    for _, b, c in sorted(candidates):", "    for _, b, c in sorted(candidates, reverse=True):",
           _GRG + ("tests/training/test_latency_budget.py", "-k", "not run and not resume and not exported"),
           "the most useful channels are pruned to meet the budget"),
    Mutant("rounded width may reach zero", "reset budget", "training/budget.py",
           "    kept = max(1, width - reset)", "    kept = max(0, width - reset)",
           ("tests/training/test_latency_budget.py", "tests/training/test_cost.py", "-k", "not run and not resume"),
           "a block priced as if it could vanish; the export keeps at least one channel"),
    # the shrink schedule, the run-length checks and the standard-pruning baseline (issue 22)
    Mutant("the schedule admits the channel that crosses its limit", "shrink schedule", "training/budget.py",
           "        if not cross:\n            trial", "        if False:\n            trial", _SCHEDULE,
           "the student shrinks ahead of its schedule"),
    Mutant("the schedule reaches the budget one step late", "shrink schedule", "training/step.py",
           "fraction = step_index / (step_index + steps_left + 1)",
           "fraction = (step_index - 1) / (step_index + steps_left + 1)", _SCHEDULE_RUN,
           "the final size arrives after cdd.shrink_end"),
    Mutant("a resumed run forgets its reset set", "shrink schedule", "training/trainer.py",
           '            self.resetter.load_state_dict(state["grg"])', "            pass", _SCHEDULE_RUN,
           "a run resumed mid-schedule starts shrinking again from the full network"),
    Mutant("the decay deadline at the shrink end is off by one", "run-length checks", "training/resetting_plan.py",
           "        after = total - first_step_at(cdd.shrink_end, total) - 1",
           "        after = total - first_step_at(cdd.shrink_end, total)", ("tests/training/test_resetting_plan.py",),
           "a run that cannot meet its budget is accepted and trains to the end"),
    Mutant("standard pruning ranks filters by L2", "standard pruning", "training/pruning.py",
           "norms = weight.detach().float().abs().flatten(1).sum(dim=1)",
           "norms = weight.detach().float().pow(2).flatten(1).sum(dim=1)", ("tests/training/test_pruning.py",),
           "the (f) baseline is not the L1 criterion it claims"),
    Mutant("resetting sees the mixed copy", "training step", "training/step.py",
           "            clean = labels.shape[0]\n", "            clean = images.shape[0]\n", _STEP,
           "unlabelled mixed images decide which channels are reset"),
    Mutant("ID and triplet see the mixed copy", "training step", "training/step.py",
           "losses = compute_losses(student_out, labels, self.losses",
           "losses = compute_losses(student_out, labels if self.mixup is None else torch.cat([labels, labels]), "
           "self.losses", _STEP, "mixed images trained with labels they do not have"),
    # the slim rebuild
    Mutant("reset rows survive the prune", "slim rebuild", "training/pruning.py",
           "        alive &= ~reset.detach().cpu()\n", "        pass\n", _PRUNING,
           "channels the budget paid for stay in the exported network"),
    Mutant("slim conv takes the first inputs, not the kept ones", "slim rebuild", "training/pruning.py",
           "out[conv_key] = conv.index_select(1, index).clone()", "out[conv_key] = conv[:, : len(kept)].clone()",
           _PRUNING, "the slim network computes something else than the trained one"),
    Mutant("round-to is ignored", "slim rebuild", "training/pruning.py",
           "target = min(len(norms), -(-len(keep) // multiple_of) * multiple_of)", "target = len(keep)",
           _PRUNING, "widths that are not multiples of cdd.round_to reach the engine"),
    # export gates
    Mutant("parity ignores the cosine", "export gates", "export/parity.py",
           "self.max_abs_err <= tolerance.max_abs_err and self.min_cosine >= tolerance.min_cosine",
           "self.max_abs_err <= tolerance.max_abs_err",
           ("tests/export/test_parity_gate.py", "tests/export/test_pipeline.py"),
           "a graph whose embeddings point elsewhere passes its gate"),
    Mutant("parity gate never fails", "export gates", "export/parity.py",
           "    if any(not p.within(tolerance) for p in measured.values()):",
           "    if False:", ("tests/export/test_parity_gate.py", "tests/export/test_pipeline.py"),
           "a wrong graph is shipped"),
    Mutant("ONNX FLOPs check skipped", "export gates", "export/onnx_flops.py",
           "    if found != expected:", "    if False:",
           ("tests/export/test_onnx_export.py", "tests/export/test_pipeline.py"),
           "the manifest's cost describes another network"),
    Mutant("compatibility gate never fails", "export gates", "export/compatibility_gate.py",
           "    if drop > max_map_drop:", "    if False:", ("tests/export/test_compatibility_gate.py",),
           "a student declares compatibility with a teacher whose gallery it cannot search"),
    Mutant("asymmetric mAP scored student/student", "export gates", "export/compatibility_gate.py",
           '"asymmetric": _cross(student.query, teacher_gallery, splits)',
           '"asymmetric": _score(student.query, student.gallery, splits)',
           ("tests/export/test_compatibility_gate.py",), "the gate measures the wrong pair of models"),
    Mutant("int8 cosine compares fp32 with itself", "export gates", "export/int8_gate.py",
           "compare(reference(take_batch(gate_images, size)), candidate(take_batch(gate_images, size)))",
           "compare(reference(take_batch(gate_images, size)), reference(take_batch(gate_images, size)))",
           ("tests/export/test_int8.py", "-k", "records_it or failing_gate"),
           "the int8 gate passes any quantised graph and records 1.0"),
    Mutant("int8 mAP gate never fails", "export gates", "export/int8_gate.py",
           "    if not drop <= tolerance.max_map_drop:", "    if False:",
           ("tests/export/test_int8.py", "-k", "map_gate"), "a quantised graph that retrieves worse is shipped"),
    # manifest file checks
    Mutant("load_bundle skips the sha256", "manifest file checks", "serving/bundle.py",
           '            if found != info.get("sha256"):', "            if False:", _BUNDLE,
           "a modified model file is served"),
    Mutant("a listed file may be missing", "manifest file checks", "serving/bundle.py",
           "            if not (root / name).is_file():", "            if False:", _BUNDLE,
           "a bundle missing a file fails later with a bare OSError"),
    Mutant("backend reads bytes without the sha256", "manifest file checks", "serving/bundle_files.py",
           "    if found != expected:", "    if False:", ("tests/serving/test_bundle_files.py",),
           "a file swapped after load_bundle reaches the runtime"),
    Mutant("a backend may name an unlisted file", "manifest file checks", "serving/bundle_files.py",
           "        if name not in files:\n            raise", "        if False:\n            raise",
           ("tests/serving/test_bundle_files.py",), "a model file no sha256 vouches for is loaded"),
    # pixel cap
    Mutant("pixel cap off", "pixel cap", "cdd_common/image_decoding.py",
           "if max_pixels is not None and width * height > max_pixels:", "if False:", _PIXELS,
           "a decompression bomb is decoded"),
    Mutant("pixel cap off by one", "pixel cap", "cdd_common/image_decoding.py",
           "if max_pixels is not None and width * height > max_pixels:",
           "if max_pixels is not None and width * height >= max_pixels:", _PIXELS,
           "an image of exactly the allowed size is refused"),
    # admission and batching
    Mutant("admission lets one call too many in", "admission", "serving/admission.py",
           "            if self._in_flight >= self.limit:", "            if self._in_flight > self.limit:",
           _ADMISSION, "--max-concurrent-rpcs N admits N + 1"),
    Mutant("admission never frees a slot", "admission", "serving/admission.py",
           "            self._in_flight -= 1\n", "            pass\n", _ADMISSION,
           "the server refuses everything after N calls"),
    Mutant("large requests are not split", "admission", "serving/batcher.py",
           "        if images is None or images.shape[0] <= self._max_batch:", "        if True:", _ADMISSION,
           "a Search waits behind a whole AddItems"),
    Mutant("batcher never batches", "admission", "serving/batcher.py",
           "self._enabled = enabled and max_batch > 1", "self._enabled = False",
           ("tests/serving/test_batcher.py", "tests/serving/test_service.py", "-k", "batch"),
           "one engine call per image under load"),
    Mutant("queued requests past their deadline still run", "admission", "serving/batcher.py",
           "            elif request.deadline is not None and started >= request.deadline:",
           "            elif False:", ("tests/serving/test_batcher.py",),
           "the engine spends time on answers nobody waits for"),
    # auth
    Mutant("a read token is an admin token", "auth", "serving/auth.py",
           'return "admin" if is_admin else "read" if is_read else None',
           'return "admin" if is_admin or is_read else None', _AUTH, "read-only clients change the gallery"),
    Mutant("unknown tokens pass", "auth", "serving/auth.py",
           "        if role is None:", "        if False:", _AUTH, "anyone can search and change the gallery"),
    Mutant("admin methods open to every role", "auth", "serving/auth.py",
           'if method in self._admin_methods and role != "admin":', "if False:", _AUTH,
           "read-only clients change the gallery"),
    # index locks
    Mutant("two servers may own one index folder", "index lock", "serving/index/index_lock.py",
           "if not _try_flock(serve, fcntl.LOCK_EX):", "if not _try_flock(serve, fcntl.LOCK_SH):", _LOCKS,
           "two processes append to the same write log"),
    Mutant("cdd-index writes under a running server", "index lock", "serving/index/index_lock.py",
           "        if not _try_flock(serve, fcntl.LOCK_SH):", "        if False:", _LOCKS,
           "an offline writer replaces files the server is using"),
    Mutant("readers overtake a waiting writer", "index lock", "serving/index/rw_lock.py",
           "            while self._writer or self._waiting_writers:", "            while self._writer:", _LOCKS,
           "a stream of searches starves AddItems"),
    Mutant("a writer does not wait for readers", "index lock", "serving/index/rw_lock.py",
           "                while self._writer or self._readers:", "                while self._writer:", _LOCKS,
           "a search reads a half-changed index"),
    # write log and replay (few: issue 24 rewrites these files; re-anchor when stale)
    Mutant("append returns before fsync", "write log", "serving/index/write_log.py",
           "            _write_all(self._fd, data)\n            os.fsync(self._fd)\n",
           "            _write_all(self._fd, data)\n",
           _DURABLE, "an acknowledged change is lost on power failure"),
    Mutant("open does not replay the log", "write log", "serving/index/durable_gallery.py",
           "                _apply(index, record, log.path, seq)\n", "                pass\n", _DURABLE,
           "changes acknowledged before a crash disappear"),
    Mutant("add is applied but not logged", "write log", "serving/index/durable_gallery.py",
           '            self._log.append(LogRecord("add", ids, array, meta, upsert))\n', "", _DURABLE,
           "an acknowledged AddItems is lost on a crash"),
)
