"""Loading the frozen teacher from its run dir, and initialising a student from it."""

from __future__ import annotations

from pathlib import Path

import torch

from training.arch_spec import ArchSpec
from training.checkpoint import load_checkpoint
from training.models.network import ReIDNet

__all__ = ["TeacherError", "check_teacher_matches", "load_teacher", "init_student_from_teacher"]


class TeacherError(ValueError):
    """The teacher run dir does not match the student's data or architecture."""


_MATCHED_FIELDS = ("input_size", "depth", "width", "last_stride", "embedding_dim")


def check_teacher_matches(teacher: ArchSpec, student: ArchSpec, source: str) -> None:
    """Raise TeacherError naming both values when the teacher's input size or architecture differs from the
    student's (CDD distils block by block from a same-architecture teacher at the same input size)."""
    for name in _MATCHED_FIELDS:
        found, expected = getattr(teacher, name), getattr(student, name)
        if (tuple(found) if name == "input_size" else found) != (tuple(expected) if name == "input_size" else expected):
            raise TeacherError(f"{source}: teacher {name} is {found}, the student's data/model config gives "
                               f"{expected}; train the teacher with the same data.height/width and model "
                               "section, or set cdd.teacher_run to a matching teacher")


def load_teacher(run_dir: str | Path, num_classes: int, device: torch.device | str = "cpu",
                 student: ArchSpec | None = None) -> ReIDNet:
    """Rebuild the teacher from ``run_dir/arch.json`` + ``checkpoint.pt``, frozen (eval mode, no grad).

    Raises TeacherError when the teacher was trained on a different number of identities or, given the
    full-width ``student`` spec, at another input size or with another architecture; CheckpointError/
    ArchSpecError for missing or malformed files."""
    run_dir = Path(run_dir)
    if not (run_dir / "arch.json").is_file():
        raise TeacherError(f"teacher run dir {run_dir} has no arch.json; train the teacher first "
                           "(`cdd-train --preset demo-teacher`, or `make train`) or fix cdd.teacher_run")
    spec = ArchSpec.load(run_dir / "arch.json")
    if spec.num_classes != num_classes:
        raise TeacherError(f"{run_dir / 'arch.json'}: teacher has {spec.num_classes} identity classes, the "
                           f"training data has {num_classes}; train the teacher on the same dataset "
                           f"(cdd-train --preset <teacher preset>) or set cdd.teacher_run to a matching run")
    if student is not None:
        check_teacher_matches(spec, student, str(run_dir / "arch.json"))
    state = load_checkpoint(run_dir / "checkpoint.pt", kind="teacher")
    teacher = ReIDNet(spec)
    try:
        teacher.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise TeacherError(f"{run_dir / 'checkpoint.pt'}: weights do not match {run_dir / 'arch.json'} "
                           f"({str(exc).splitlines()[0]}); retrain the teacher") from exc
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def init_student_from_teacher(student: ReIDNet, teacher: ReIDNet) -> None:
    """Copy every teacher tensor into a same-architecture student; indicators keep their identity init.

    Raises TeacherError naming the first mismatching tensor."""
    own = student.state_dict()
    source = teacher.state_dict()
    for key, value in source.items():
        if key not in own:
            raise TeacherError(f"teacher tensor {key!r} has no counterpart in the student; student and "
                               "teacher must share depth/width (model section) for init=teacher")
        if own[key].shape != value.shape:
            raise TeacherError(f"{key}: teacher shape {tuple(value.shape)} != student {tuple(own[key].shape)}; "
                               "use the same depth/width or init=scratch")
    missing = [k for k in own if k not in source and ".indicator." not in k]
    if missing:
        raise TeacherError(f"student tensors {missing[:3]} are missing from the teacher; same architecture needed")
    student.load_state_dict(source, strict=False)
