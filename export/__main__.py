"""``cdd-export`` / ``python -m export``: turn a training run dir into a checked model bundle.

    cdd-export --run RUN --out DIR [--precision fp32|int8] [--tensorrt auto|off|required] [--int8]
               [--set key=value ...] [--triton-repo REPO [--triton-name NAME] ...]

``--precision int8`` writes an ONNX Runtime int8 bundle for CPUs (static quantisation calibrated on the run's
training images, gated on cosine and mAP against fp32; settings under ``int8.*`` and ``gates.int8.*``).
``--int8`` is different: an fp32 bundle whose TensorRT plan (GPU) is built with INT8 calibration.

Exit codes: 0 bundle written; 1 bad input (run dir, config, output path, TensorRT required but missing,
quantisation failed); 2 bad command line; 3 a parity or int8 gate failed. No bundle is written unless the
exit code is 0. ``--triton-repo`` also writes the new bundle as a Triton model repository entry
(`serving.triton_repository`); if that fails the bundle stays and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from export.config import PRECISIONS, TENSORRT_MODES, load_export_config
from export.errors import ExportError
from serving.bundle_cli import add_triton_arguments, triton_options
from serving.extras import missing_extra
from serving.triton_repository import write_triton_model

if TYPE_CHECKING:
    from export.pipeline import ExportResult

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdd-export", description="Export a training run dir to a model bundle "
                                     "(ONNX + torch program + TensorRT plan where available), gated by parity checks.")
    parser.add_argument("--run", required=True, help="training run dir (arch.json, checkpoint.pt, config.json, "
                        "metrics.json)")
    parser.add_argument("--out", required=True, help="bundle directory to create (an existing bundle is replaced)")
    parser.add_argument("--tensorrt", choices=TENSORRT_MODES, default=None,
                        help="build a TensorRT plan: auto (where TensorRT and a GPU exist; default; a failed build is "
                             "left out, its reason printed and kept as provenance.tensorrt), off, required (fail "
                             "instead)")
    parser.add_argument("--compatible-with", metavar="TEACHER_BUNDLE", default=None,
                        help="declare the bundle compatible with TEACHER_BUNDLE (asymmetric retrieval: its queries "
                             "search galleries that bundle embedded) after measuring it; fails the export when the "
                             "asymmetric mAP is more than compatibility.max_map_drop points below the teacher's")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="numeric precision of model.onnx: fp32 (default) or int8 (ONNX Runtime static "
                             "quantisation for CPUs, gated on cosine and mAP against fp32)")
    parser.add_argument("--int8", action="store_true", help="INT8 TensorRT engine (GPU) in an fp32 bundle, "
                        "calibrated on training images; not the CPU int8 graph (that is --precision int8)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an export config value, e.g. --set gates.onnxruntime.max_abs_err=1e-5 "
                             "--set batch.max=32 (repeatable)")
    parser.add_argument("--triton-repo", metavar="REPO", default=None,
                        help="also write the bundle into this Triton model repository (REPO/<name>/config.pbtxt, "
                             "REPO/<name>/1/model.onnx); see docs/triton.md")
    add_triton_arguments(parser, name_flag="--triton-name")
    return parser


def _summary(result: ExportResult) -> list[str]:
    from training.cost import Cost, reduction_percent

    manifest = result.manifest
    lines = [f"cdd-export: {manifest.provenance['run_kind']} run {manifest.provenance['run_dir']} "
             f"({manifest.precision})"]
    for gate, numbers in manifest.parity.items():
        if gate == "int8":
            lines.append(f"  gate {gate:<14} min_cosine {numbers['min_cosine']:.5f}  mAP {numbers['map_int8']:.2f} "
                         f"vs fp32 {numbers['map_fp32']:.2f} (drop {numbers['map_drop']:.2f} points, "
                         f"{numbers['eval_queries']} queries)  ok")
            continue
        if gate == "compatibility":  # measured numbers, printed below
            continue
        sizes = ",".join(str(b) for b in numbers["batch_sizes"])
        lines.append(f"  gate {gate:<14} max_abs_err {numbers['max_abs_err']:.2e}  "
                     f"min_cosine {numbers['min_cosine']:.7f}  batches {sizes}  ok")
    student, teacher = Cost(**manifest.cost["student"]), Cost(**manifest.cost["teacher"])
    saved = reduction_percent(teacher, student)
    lines.append(f"  params {student.params / 1e6:.3f}M vs teacher {teacher.params / 1e6:.3f}M "
                 f"({saved['params']:.1f}% fewer)")
    lines.append(f"  flops  {student.flops / 1e9:.4f} GMAC vs teacher {teacher.flops / 1e9:.4f} GMAC "
                 f"({saved['flops']:.1f}% fewer) at {manifest.input.height}x{manifest.input.width}")
    for entry in manifest.parity.get("compatibility", []):
        lines.append(f"  compatible with {entry['bundle_name']} (sha256 {entry['bundle_sha256'][:12]}...): mAP "
                     f"student-query/teacher-gallery {entry['mAP']['asymmetric']:.2f}%, teacher/teacher "
                     f"{entry['mAP']['gallery_bundle']:.2f}%, student/student {entry['mAP']['this_bundle']:.2f}%")
    if manifest.quantization:
        q, timing = manifest.quantization, manifest.quantization["timing"]
        speed = "  ".join(f"{name} {ips:.0f} img/s" for name, ips in timing["images_per_second"].items())
        calib = q["calibration"]
        lines.append(f"  int8: {q['candidate']} (timed {', '.join(q['candidates_timed'])}), {calib['method']} "
                     f"calibration on {calib['images']} train images (seed {calib['seed']})")
        lines.append(f"  batch {timing['batch']}: {speed}")
    if manifest.compatible_with and "int8" in manifest.parity:
        cross = manifest.parity["int8"]["compatible_with"]
        lines.append(f"  indexes of {cross['bundle']} accepted: int8 queries on its gallery mAP "
                     f"{cross['map_cross']:.2f} (drop {cross['map_drop']:.2f} points)")
    if result.tensorrt_note is not None:
        lines.append(f"  tensorrt: {result.tensorrt_note}")
    lines.append(f"  bundle: {result.bundle} ({', '.join(sorted(manifest.files))})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (message := missing_extra("cdd-export", "export")) is not None:
        print(message, file=sys.stderr)
        return 1
    from export.parity import ParityGateError
    from export.pipeline import export_bundle

    overrides = list(args.set)
    if args.tensorrt is not None:
        overrides.append(f"tensorrt.mode={args.tensorrt}")
    if args.int8:
        overrides.append("tensorrt.int8=true")
    if args.compatible_with is not None:
        overrides.append(f"compatibility.teacher_bundle={args.compatible_with}")
    if args.precision is not None:
        overrides.append(f"precision={args.precision}")
    try:
        triton = triton_options(args) if args.triton_repo is not None else None
    except ValueError as exc:
        print(f"cdd-export: {exc}", file=sys.stderr)
        return 2
    try:
        result = export_bundle(args.run, args.out, load_export_config(overrides))
    except ParityGateError as exc:
        print(f"cdd-export: {exc}", file=sys.stderr)
        return 3
    except ExportError as exc:
        print(f"cdd-export: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(_summary(result)))
    if triton is not None:
        try:
            model = write_triton_model(result.bundle, args.triton_repo, triton)
        except (ExportError, ValueError, OSError) as exc:
            print(f"cdd-export: the bundle is written, but not its Triton model: {exc}", file=sys.stderr)
            return 1
        print(f"  triton: model {model.name} in {model} (config.pbtxt, 1/model.onnx)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
