"""``cdd-export`` / ``python -m export``: turn a training run dir into a checked model bundle.

    cdd-export --run RUN --out DIR [--precision fp32|int8] [--tensorrt auto|off|required]
               [--tensorrt-precision fp16|int8] [--compatible-with BUNDLE] [--set key=value ...]
               [--triton-repo REPO [--triton-name NAME] ...]

``--precision int8`` writes an ONNX Runtime int8 bundle for CPUs (static quantisation calibrated on the run's
training images, gated on cosine and mAP against fp32; settings under ``int8.*`` and ``gates.int8.*``).
``--tensorrt-precision int8`` is different: an fp32 bundle whose TensorRT plan (GPU) is built with INT8
calibration (``tensorrt.int8``); the plan is fp16 otherwise.

``--compatible-with BUNDLE`` is the one compatibility flag: the bundle declares that its queries may search
galleries BUNDLE embedded, once measured. For an fp32 export BUNDLE is another model's bundle (a teacher:
asymmetric retrieval, ``compatibility.teacher_bundle``, gated by ``compatibility.max_map_drop``); for
``--precision int8`` it is the fp32 bundle of the same checkpoint (``int8.compatible_with``, gated by
``gates.int8.max_map_drop``).

Old spellings, still accepted for one release with a one-line notice naming the new one: ``--int8`` is
``--tensorrt-precision int8``; ``--set int8.compatible_with=BUNDLE`` is ``--precision int8 --compatible-with
BUNDLE``.

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

from cdd_common.deprecated_flags import add_deprecated_alias, deprecation_notice
from export.config import PRECISIONS, TENSORRT_MODES, ExportConfig, load_export_config
from export.errors import ExportError
from serving.bundle_cli import add_triton_arguments, triton_options
from serving.extras import missing_extra
from serving.triton_repository import write_triton_model

if TYPE_CHECKING:
    from export.pipeline import ExportResult

__all__ = ["main"]

TENSORRT_PRECISIONS = ("fp16", "int8")


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
    parser.add_argument("--compatible-with", metavar="BUNDLE", default=None,
                        help="declare that this bundle's queries may search galleries BUNDLE embedded, after "
                             "measuring it: for fp32, BUNDLE is a teacher's bundle (asymmetric retrieval; fails when "
                             "the asymmetric mAP is more than compatibility.max_map_drop points below the "
                             "teacher's); for --precision int8, the fp32 bundle of the same checkpoint (fails past "
                             "gates.int8.max_map_drop)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="numeric precision of model.onnx: fp32 (default) or int8 (ONNX Runtime static "
                             "quantisation for CPUs, gated on cosine and mAP against fp32)")
    parser.add_argument("--tensorrt-precision", choices=TENSORRT_PRECISIONS, default=None,
                        help="precision of the TensorRT plan (GPU) in an fp32 bundle: fp16 (default) or int8 "
                             "(calibrated on training images); not the CPU int8 graph (that is --precision int8)")
    add_deprecated_alias(parser, "--int8", new="--tensorrt-precision int8", dest="tensorrt_precision", value="int8")
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


def _overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides followed by those the flags stand for (the flags win)."""
    for text in args.set:
        key, _, value = text.partition("=")
        if key.strip() == "int8.compatible_with":
            deprecation_notice("cdd-export", "--set int8.compatible_with",
                               f"--precision int8 --compatible-with {value.strip()}")
    overrides = list(args.set)
    if args.tensorrt is not None:
        overrides.append(f"tensorrt.mode={args.tensorrt}")
    if args.tensorrt_precision is not None:
        overrides.append(f"tensorrt.int8={str(args.tensorrt_precision == 'int8').lower()}")
    if args.precision is not None:
        overrides.append(f"precision={args.precision}")
    return overrides


def _config(overrides: list[str], compatible_with: str | None) -> ExportConfig:
    """The export config; ``--compatible-with`` sets ``int8.compatible_with`` for an int8 export and
    ``compatibility.teacher_bundle`` otherwise. Raises ExportConfigError."""
    config = load_export_config(overrides)
    if compatible_with is None:
        return config
    key = "int8.compatible_with" if config.precision == "int8" else "compatibility.teacher_bundle"
    return load_export_config([*overrides, f"{key}={compatible_with}"])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (message := missing_extra("cdd-export", "export")) is not None:
        print(message, file=sys.stderr)
        return 1
    from export.parity import ParityGateError
    from export.pipeline import export_bundle

    overrides = _overrides(args)
    try:
        triton = triton_options(args) if args.triton_repo is not None else None
    except ValueError as exc:
        print(f"cdd-export: {exc}", file=sys.stderr)
        return 2
    try:
        result = export_bundle(args.run, args.out, _config(overrides, args.compatible_with))
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
