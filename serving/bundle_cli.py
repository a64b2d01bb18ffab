"""``cdd-bundle``: tools for existing model bundles (serving install; no torch).

    cdd-bundle to-triton --bundle DIR --repo REPO [--name NAME] [--max-queue-delay-us US]
                         [--instance-kind auto|cpu|gpu] [--instances N]

Exit codes: 0 done; 1 bad bundle or output; 2 bad command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from serving.bundle_files import BundleError
from serving.triton_repository import INSTANCE_KINDS, TritonOptions, write_triton_model

__all__ = ["main", "add_triton_arguments", "triton_options"]


def add_triton_arguments(parser: argparse.ArgumentParser, name_flag: str = "--name") -> None:
    """The Triton model options shared by ``cdd-bundle to-triton`` and ``cdd-export --triton-repo``."""
    parser.add_argument(name_flag, dest="triton_name", help="Triton model name (default: the bundle's)")
    parser.add_argument("--max-queue-delay-us", type=int, default=TritonOptions.max_queue_delay_us,
                        help="how long Triton may hold a request to form a batch (microseconds)")
    parser.add_argument("--instance-kind", choices=sorted(INSTANCE_KINDS), default=TritonOptions.instance_kind,
                        help="where Triton runs the model (auto: Triton decides)")
    parser.add_argument("--instances", type=int, default=TritonOptions.instances, help="model instances per device")


def triton_options(args: argparse.Namespace) -> TritonOptions:
    if args.instances < 1 or args.max_queue_delay_us < 0:
        raise ValueError(f"--instances must be >= 1 and --max-queue-delay-us >= 0, found {args.instances} and "
                         f"{args.max_queue_delay_us}")
    return TritonOptions(args.triton_name, args.max_queue_delay_us, args.instance_kind, args.instances)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdd-bundle", description="Tools for cdd model bundles.")
    commands = parser.add_subparsers(dest="command", required=True)
    triton = commands.add_parser("to-triton", help="write the bundle as a Triton model repository entry")
    triton.add_argument("--bundle", type=Path, required=True, help="model bundle directory (cdd-export output)")
    triton.add_argument("--repo", type=Path, required=True, help="Triton model repository (created if missing)")
    add_triton_arguments(triton)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        model = write_triton_model(args.bundle, args.repo, triton_options(args))
    except (BundleError, ValueError, OSError) as exc:
        print(f"cdd-bundle: {exc}", file=sys.stderr)
        return 1
    print(f"cdd-bundle: Triton model {model.name} written to {model} (config.pbtxt, 1/model.onnx, cdd-manifest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
