"""The ``cdd-index build`` options of the Ray engine, and the build they run (`serving.index.ray_build`).
Importing this module does not import Ray."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from serving.index.build import items_from_folder, items_from_layout, items_from_list

__all__ = ["add_ray_arguments", "build_on_ray"]


def add_ray_arguments(build: argparse.ArgumentParser) -> None:
    """Add --engine, --ray-address, --ray-cpus, --ray-actors, --ray-gpus-per-actor, --report and --id-column to
    the build parser."""
    build.add_argument("--engine", default="local", choices=("local", "ray"),
                       help="local: this process; ray: Ray tasks decode, Ray actors embed and write to Milvus "
                            "(needs --store milvus --milvus-uri of a server; pip install 'cdd-retrieval[ray]')")
    build.add_argument("--ray-address", help="Ray cluster to run on ('auto', 'ray://HOST:10001'); default: a "
                                             "local Ray runtime on this machine's cores")
    build.add_argument("--ray-cpus", type=int, help="logical CPUs of the local Ray runtime (default: this machine's "
                                                    "cores; without --ray-address)")
    build.add_argument("--ray-actors", type=int, default=1, help="embedding actors (each loads the bundle once)")
    build.add_argument("--ray-gpus-per-actor", type=float, default=0.0,
                       help="GPUs each actor reserves (0.5: two actors per GPU; with --backend tensorrt)")
    build.add_argument("--report", type=Path, help="Ray build report with the failed inputs (default OUT.report.json)")
    build.add_argument("--id-column", help="--manifest column holding the item ids (default: the path column)")


def _source(args: argparse.Namespace) -> Any:
    from serving.index.ray_inputs import ParquetManifest, item_rows

    if args.manifest is not None:
        return ParquetManifest(args.manifest, args.id_column, args.id_prefix)
    if args.id_column:
        raise ValueError("--id-column goes with --manifest (a Parquet manifest)")
    if args.images is not None:
        return item_rows(items_from_folder(args.images, args.id_prefix))
    if args.list is not None:
        return item_rows(items_from_list(args.list, args.id_prefix))
    if args.root is None:
        raise ValueError("--layout needs --root (the extracted dataset folder)")
    return item_rows(items_from_layout(args.layout, args.root, args.split, args.id_prefix))


def build_on_ray(args: argparse.Namespace, options: dict[str, int]) -> dict[str, Any]:
    """Run ``cdd-index build --engine ray`` with the parsed ``args``; the JSON summary."""
    from serving.index.ray_build import RayBuildConfig, ray_build
    from serving.index.ray_inputs import id_rule

    if args.store != "milvus" or not args.milvus_uri:
        raise ValueError("--engine ray writes to a Milvus server: add --store milvus --milvus-uri http://HOST:19530")
    for flag, value in (("--ray-actors", args.ray_actors), ("--ray-cpus", args.ray_cpus),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, found {value}")
    if args.ray_gpus_per_actor < 0:
        raise ValueError(f"--ray-gpus-per-actor must be >= 0, found {args.ray_gpus_per_actor}")
    if args.strict:
        raise ValueError("--strict is not available with --engine ray: failed inputs go to the --report file")
    cfg = RayBuildConfig(
        bundle=args.bundle, uri=args.milvus_uri, out=args.out, collection=args.collection,
        index_type=args.index_type, options=options, backend=args.backend, batch_size=args.batch_size,
        actors=args.ray_actors, engine_threads=max(1, args.engine_threads), gpus_per_actor=args.ray_gpus_per_actor,
        ray_address=args.ray_address,
        ray_cpus=args.ray_cpus, restart=args.restart, report=args.report, progress=not args.quiet,
        id_rule=id_rule(args.id_column),
    )
    summary = ray_build(cfg, _source(args))
    return {"index": str(args.out), "engine": "ray", "store": "milvus", "collection": args.collection,
            "report": str(cfg.report_path), **summary.to_dict()}
