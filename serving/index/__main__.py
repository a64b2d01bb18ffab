"""``cdd-index``: build, grow, shrink, inspect, verify and evaluate a gallery index.

    cdd-index build  --bundle DIR (--images DIR | --list FILE | --layout NAME --root DIR [--split gallery])
                     --out DIR [--index-type flat|ivf|ivfpq|hnsw] [--backend auto] [--batch-size N]
                     [--decode-threads N] [--engine-threads N] [--strict] [--index-device cpu|cuda|auto]
                     [--set index.KEY=VALUE ...]
                     [--store faiss|milvus [--milvus-uri URI] [--collection NAME]] [--commit-every N] [--restart]
                     [--engine ray --milvus-uri URI [--manifest FILE.parquet [--id-column C]] [--ray-address A]
                      [--ray-actors N] [--report FILE]]   (serving/index/ray_build.py, docs/scale.md)
    cdd-index add    --index DIR --bundle DIR (--images DIR | --list FILE | --layout ...) [...]
    cdd-index remove --index DIR --ids ID [ID ...]
    cdd-index info   --index DIR [--recall [--queries N] [--k K]]
    cdd-index verify --index DIR --bundle DIR [--images DIR [--sample N]]
    cdd-index eval   --index DIR --bundle DIR --layout market1501 --root DIR
    cdd-index check  --index DIR
    cdd-index repair --index DIR [--backup DIR]

``add`` and ``remove`` take the index folder's writer lock from load to publish, so concurrent runs
apply one after the other and keep every change; on a folder a running cdd-serve has open they are
refused (change the gallery through the server instead). Approximate indexes are built at the operating
point (nprobe / ef_search) that reaches recall@10 >= 0.95, stored in the index manifest.
``check`` verifies the live snapshot and its write log offline (exit 1 when damaged); ``repair`` salvages
the intact records of a damaged log into a new snapshot after copying the old state to a backup folder
(`serving.index.log_repair`, docs/durability.md).
Renamed flags (the old spelling still works for one release and prints the new one): ``--workers`` is
``--decode-threads``, ``--device`` is ``--index-device`` (as in cdd-serve), ``--option KEY=VALUE`` is
``--set index.KEY=VALUE`` (the ``--set`` grammar of cdd-train and cdd-export).
Results go to stdout as JSON, progress (done/total, images/s, ETA) and logs to stderr. Errors print one
message and exit with 2. ``build`` commits its work in chunks to ``OUT.partial/``
(`serving.index.build_journal`): run the same command again after a kill and it resumes there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdd_common.deprecated_flags import add_deprecated_alias
from serving.backends import BACKENDS, BackendUnavailable, Engine, create_engine
from serving.bundle import BundleError, Manifest, load_bundle
from serving.errors import ServiceError
from serving.index.build import (
    IngestStats,
    ItemSpec,
    embed_paths,
    ingest,
    items_from_folder,
    items_from_layout,
    items_from_list,
)
from serving.index.build_journal import BuildJournal, journal_dir, plan_for
from serving.index.errors import GalleryIndexError
from serving.index.faiss_factory import check_factory
from serving.index.gallery import DEVICES, INDEX_TYPES, OPTION_KEYS, GalleryIndex
from serving.index.gallery_backend import STORES, open_gallery
from serving.index.log_repair import check_index, repair_index
from serving.index.ray_cli import add_ray_arguments, build_on_ray
from serving.index.recall import recall_at_k_vs_exact
from serving.index.store_build import build_store
from serving.index.tuning_settings import tuning_options

__all__ = ["main"]

_LOG = logging.getLogger("cdd-index")
_VERIFY_MIN_COSINE = 0.999


def _add_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images (recursive)")
    source.add_argument("--list", type=Path, help="file with one 'path[<TAB>label[<TAB>camera]]' per line")
    source.add_argument("--layout", help="dataset layout read by training.data.layouts (e.g. market1501)")
    source.add_argument("--manifest", type=Path, help="Parquet file with a 'path' column (build --engine ray)")
    parser.add_argument("--root", type=Path, help="dataset folder for --layout")
    parser.add_argument("--split", default="gallery", choices=("train", "query", "gallery"))
    parser.add_argument("--id-prefix", default="", help="prepended to every item id")


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder (cdd-export output)")
    parser.add_argument("--backend", default="auto", choices=("auto", *BACKENDS))
    parser.add_argument("--batch-size", type=int, default=None, help="images per engine call (default: max)")
    parser.add_argument("--decode-threads", type=int, default=1, help="image decoding threads")
    add_deprecated_alias(parser, "--workers", new="--decode-threads {value}", dest="decode_threads", type=int)
    parser.add_argument("--engine-threads", type=int, default=0,
                        help="ONNX Runtime CPU threads (default: cores - decode threads, at least 1; the split "
                             "measured fastest by cdd-bench index, see docs/performance-notes.md)")
    parser.add_argument("--strict", action="store_true", help="fail on the first unreadable image")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdd-index", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="embed images and write a new index")
    _add_engine(build)
    _add_source(build)
    build.add_argument("--out", type=Path, required=True, help="index folder to write (replaced atomically)")
    build.add_argument("--index-type", default="flat", choices=[t for t in INDEX_TYPES if t != "factory"],
                       help="flat = FAISS 'Flat', ivf = 'IVF<nlist>,Flat', ivfpq = 'IVF<nlist>,PQ<m>x<nbits>', "
                            "hnsw = 'HNSW<hnsw_m>' (nlist, m, nbits chosen from the gallery unless given)")
    build.add_argument("--factory", metavar="STRING",
                       help="any FAISS index factory string for inner product, e.g. 'IVF256,PQ16x4fs' or 'HNSW32' "
                            "(instead of --index-type; its nprobe / ef_search is tuned like theirs)")
    build.add_argument("--commit-every", type=int, default=1024,
                       help="images per chunk committed to OUT.partial/; a killed build resumes from there")
    build.add_argument("--restart", action="store_true", help="discard OUT.partial/ and start over")
    build.add_argument("--index-device", default="cpu", choices=DEVICES, help="where the index searches")
    add_deprecated_alias(build, "--device", new="--index-device {value}", dest="index_device", choices=DEVICES)
    build.add_argument("--set", dest="tuning", action="append", default=[], metavar="index.KEY=VALUE",
                       help="index tuning option (repeatable), KEY one of "
                            f"{', '.join(sorted(OPTION_KEYS - {'factory'}))}, e.g. --set index.nlist=256")
    add_deprecated_alias(build, "--option", new="--set index.{value}", dest="tuning", append=True,
                         rewrite=lambda pair: f"index.{pair}", metavar="KEY=VALUE")
    build.add_argument("--store", default="faiss", choices=STORES, help="where the items live (default faiss)")
    build.add_argument("--milvus-uri", help="Milvus server URI (default: embedded milvus-lite under --out)")
    build.add_argument("--collection", default="cdd_gallery", help="Milvus collection name")
    add_ray_arguments(build)
    add = commands.add_parser("add", help="embed images and add them to an index")
    add.add_argument("--index", type=Path, required=True)
    _add_engine(add)
    _add_source(add)
    remove = commands.add_parser("remove", help="remove items by id")
    remove.add_argument("--index", type=Path, required=True)
    remove.add_argument("--ids", nargs="+", required=True)
    info = commands.add_parser("info", help="print the index manifest and statistics")
    info.add_argument("--index", type=Path, required=True)
    info.add_argument("--recall", action="store_true", help="measure recall@k against exact search")
    info.add_argument("--queries", type=int, default=200, help="stored vectors used as --recall queries")
    info.add_argument("--k", type=int, default=10)
    verify = commands.add_parser(
        "verify", help="check checksums, bundle match, counts, and re-embed a sample"
    )
    verify.add_argument("--index", type=Path, required=True)
    verify.add_argument("--bundle", type=Path, required=True)
    verify.add_argument("--images", type=Path, help="folder the items' 'path' metadata is relative to")
    verify.add_argument("--sample", type=int, default=8, help="items to re-embed (with --images)")
    verify.add_argument("--backend", default="auto", choices=("auto", *BACKENDS))
    evaluate = commands.add_parser("eval", help="mAP / CMC (percent) of a dataset's queries against the index")
    evaluate.add_argument("--index", type=Path, required=True)
    _add_engine(evaluate)
    evaluate.add_argument("--layout", required=True)
    evaluate.add_argument("--root", type=Path, required=True)
    check = commands.add_parser("check", help="verify the snapshot and write log offline (exit 1 if damaged)")
    check.add_argument("--index", type=Path, required=True)
    repair = commands.add_parser("repair", help="salvage a damaged write log into a new snapshot (keeps a backup)")
    repair.add_argument("--index", type=Path, required=True)
    repair.add_argument("--backup", type=Path, help="folder for the backup (default: INDEX.backup-<utc time>)")
    return parser


def _items(args: argparse.Namespace) -> list[ItemSpec]:
    if args.images is not None:
        return items_from_folder(args.images, args.id_prefix)
    if args.list is not None:
        return items_from_list(args.list, args.id_prefix)
    if args.manifest is not None:
        raise ValueError("--manifest (Parquet) is read by build --engine ray; for the local engine use --list")
    if args.root is None:
        raise ValueError("--layout needs --root (the extracted dataset folder)")
    return items_from_layout(args.layout, args.root, args.split, args.id_prefix)


def _engine(args: argparse.Namespace) -> tuple[Manifest, Engine]:
    manifest = load_bundle(args.bundle)
    threads = args.engine_threads or max(1, (os.cpu_count() or 1) - args.decode_threads)
    return manifest, create_engine(args.bundle, manifest, backend=args.backend, log=_LOG, threads=threads)


def _report(stats: IngestStats, index: str | Path, count: int) -> dict[str, Any]:
    if stats.skipped:
        _LOG.warning(
            "skipped %d unreadable image(s):\n  %s",
            len(stats.skipped),
            "\n  ".join(f"{p}: {r}" for p, r in stats.skipped),
        )
    return {"index": str(index), "count": count, "ingest": stats.to_dict()}


def _build(args: argparse.Namespace) -> dict[str, Any]:
    if args.engine == "ray":
        return build_on_ray(args, tuning_options(args.tuning))
    items = _items(args)
    if args.store == "faiss" and (args.milvus_uri or args.collection != "cdd_gallery"):
        raise ValueError("--milvus-uri and --collection go with --store milvus")
    options = tuning_options(args.tuning)
    if args.factory is not None:
        if args.index_type != "flat" or args.store != "faiss":
            raise ValueError("--factory replaces --index-type and needs --store faiss; give one of them")
        args.index_type, options["factory"] = "factory", args.factory
    manifest, engine = _engine(args)
    if args.factory is not None:
        check_factory(args.factory, manifest.output.dim)
    plan = plan_for(manifest.sha256(), f"{args.store}:{args.index_type}", options,
                    [(i.id, str(i.path)) for i in items])
    journal = BuildJournal.open(journal_dir(args.out), plan, restart=args.restart)
    if journal.committed:
        _LOG.info("resuming: %d of %d items already committed in %s", journal.committed, len(items),
                  journal.directory)
    result = build_store(
        engine,
        manifest,
        items,
        args.out,
        store=args.store,
        index_type=args.index_type,
        device=args.index_device,
        options=options,
        milvus_uri=args.milvus_uri,
        collection=args.collection,
        batch_size=args.batch_size,
        workers=args.decode_threads,
        strict=args.strict,
        progress=not args.quiet,
        journal=journal,
        commit_every=args.commit_every,
    )
    report = _report(result.stats, args.out, result.count)
    journal.remove()
    return report | {"backend": engine.describe(), "store": args.store, "operating_point": result.operating_point}


def _add(args: argparse.Namespace) -> dict[str, Any]:
    items = _items(args)
    manifest, engine = _engine(args)
    gallery = open_gallery(args.index, manifest.sha256(), compatible=manifest.compatible_with, role="writer")
    try:
        stats = ingest(
            gallery,
            engine,
            manifest,
            items,
            batch_size=args.batch_size,
            workers=args.decode_threads,
            strict=args.strict,
            progress=not args.quiet,
        )
        count = len(gallery)
    finally:
        gallery.close()
    return _report(stats, args.index, count)


def _remove(args: argparse.Namespace) -> dict[str, Any]:
    gallery = open_gallery(args.index, role="writer")
    try:
        removed = gallery.remove(args.ids)
        count = len(gallery)
    finally:
        gallery.close()
    return {"index": str(args.index), "removed": removed, "count": count}


def _info(args: argparse.Namespace) -> dict[str, Any]:
    index = GalleryIndex.load(args.index)
    out = {"saved": GalleryIndex.read_info(args.index).get("saved"), **index.stats()}
    if args.recall:
        ids, vectors, _ = index.snapshot()
        picks = np.random.default_rng(0).permutation(len(ids))[: args.queries]
        out["recall"] = {
            "k": args.k,
            "queries": int(picks.size),
            "recall_at_k_vs_exact": recall_at_k_vs_exact(index, vectors[picks], args.k),
        }
    return out


def _verify(args: argparse.Namespace) -> dict[str, Any]:
    manifest = load_bundle(args.bundle)
    index = GalleryIndex.load(args.index, expected_bundle_sha256=manifest.sha256(),
                              compatible=manifest.compatible_with)
    info = GalleryIndex.read_info(args.index)
    if info["count"] != len(index) or info["dim"] != manifest.output.dim:
        raise GalleryIndexError(
            f"index.json says count {info['count']} dim {info['dim']}, loaded {len(index)} items, bundle dim "
            f"{manifest.output.dim}; rebuild the index"
        )
    report: dict[str, Any] = {"checksums": "ok", "bundle": "match", "count": len(index), "re_embedded": 0}
    if args.images is None or args.sample <= 0:
        return report
    ids, vectors, metadata = index.snapshot()
    picks = np.random.default_rng(0).permutation(len(ids))[: args.sample]
    paths = [args.images / metadata[i]["path"] for i in picks]
    engine = create_engine(args.bundle, manifest, backend=args.backend, log=_LOG)
    fresh, ok, _ = embed_paths(engine, manifest, paths, strict=True, progress=False)
    cosines = np.sum(fresh * vectors[picks], axis=1)
    report |= {
        "re_embedded": int(ok.sum()),
        "min_cosine": float(cosines.min()),
        "max_abs_err": float(np.abs(fresh - vectors[picks]).max()),
    }
    if cosines.min() < _VERIFY_MIN_COSINE:
        worst = ids[int(picks[int(np.argmin(cosines))])]
        raise GalleryIndexError(
            f"re-embedded item {worst!r} has cosine {cosines.min():.5f} with its stored vector (< "
            f"{_VERIFY_MIN_COSINE}); the images or the engine changed since the build; rebuild the index"
        )
    return report


def _labels_and_cameras(metadata: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    try:
        labels = np.asarray([int(m["label"]) for m in metadata])
        cameras = np.asarray([int(m.get("camera", -1)) for m in metadata])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"index items need integer 'label' (and 'camera') metadata for eval ({exc!r}); build the index "
            "with --layout or from Market-style file names"
        ) from exc
    return labels, cameras


def _eval(args: argparse.Namespace) -> dict[str, Any]:
    try:
        from training.data.layouts import load_dataset
        from training.metrics import evaluate_retrieval
    except ImportError as exc:
        raise ValueError(
            f"eval needs the training package's readers and metrics ({exc}); pip install -e ."
        ) from exc
    manifest, engine = _engine(args)
    index = GalleryIndex.load(args.index, expected_bundle_sha256=manifest.sha256(),
                              compatible=manifest.compatible_with)
    splits = load_dataset(args.layout, args.root)
    _, gallery, metadata = index.snapshot()
    gallery_ids, gallery_cams = _labels_and_cameras(metadata)
    if splits.protocol == "reid":
        # Market-style junk images (label -1) are not part of the re-ID protocol's gallery.
        keep = gallery_ids != -1
        gallery, gallery_ids, gallery_cams = gallery[keep], gallery_ids[keep], gallery_cams[keep]
    if splits.protocol == "class":
        metrics = evaluate_retrieval(gallery, gallery, gallery_ids, gallery_ids, query_is_gallery=True)
    else:
        paths = [Path(r.path) for r in splits.query]
        queries, _, _ = embed_paths(
            engine,
            manifest,
            paths,
            batch_size=args.batch_size,
            workers=args.decode_threads,
            strict=True,
            progress=not args.quiet,
        )
        metrics = evaluate_retrieval(
            queries,
            gallery,
            [r.pid for r in splits.query],
            gallery_ids,
            [r.camid for r in splits.query],
            gallery_cams,
        )
    return {
        "layout": args.layout,
        "protocol": splits.protocol,
        "gallery_items": len(index),
        "gallery_items_evaluated": int(len(gallery_ids)),
        "layout_gallery_records": len(splits.gallery),
        "similarity": "exact over stored vectors",
        **metrics.as_percent(),  # mAP and rank-k in percent, as cdd-train reports them
    }


_COMMANDS = {
    "build": _build, "add": _add, "remove": _remove, "info": _info, "verify": _verify, "eval": _eval,
    "check": lambda args: check_index(args.index), "repair": lambda args: repair_index(args.index, args.backup),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one cdd-index command; returns 0, 1 when ``check`` found damage, or 2 after printing the error."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        result = _COMMANDS[args.command](args)
    except (GalleryIndexError, BundleError, BackendUnavailable, ValueError, OSError, ServiceError) as exc:
        print(f"cdd-index {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True))
    return 1 if result.get("ok") is False else 0


if __name__ == "__main__":
    sys.exit(main())
