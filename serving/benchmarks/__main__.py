"""``cdd-bench``: engine, serving and index benchmarks, written as JSON + markdown + PNG.

    cdd-bench engine --bundle DIR [--bundle DIR ...] [--labels student,teacher]
                     [--backends auto|cpu|gpu|LIST] [--batches 1,2,4,8,16,32,64] [--warmup N]
                     [--iters N | --seconds S] [--engine-threads N] --out DIR
    cdd-bench serve  --bundle DIR [--realistic DIR] [--target HOST:PORT] [--images DIR]
                     [--concurrency 1,4,16] [--seconds 5] [--max-batch 16] [--max-wait-ms 2] --out DIR
    cdd-bench index  --bundle DIR --images DIR [--sizes 10000,100000] [--types flat,ivf,hnsw,ivfpq,milvus-flat]
                     [--search-seconds S] [--max-build-s S] [--engines local,ray] --out DIR
    cdd-bench profile --bundle DIR [--bundle DIR ...] [--labels ...] [--batch 32] [--runs 10] --out DIR
    cdd-bench search-cost --bundle DIR [--batches 1,6,16] [--rounds 7] [--calls 200] --out DIR
    cdd-bench all    [--student bundles/demo] [--teacher bundles/demo-teacher]
                     [--index-images data/synthetic-reid/bounding_box_test] [--out docs]

``engine`` / ``serve`` / ``index`` write ``OUT/<name>.json``, ``.md`` and ``.png``; ``profile`` (per-op-type
ONNX Runtime CPU kernel time, e.g. an int8 bundle next to its fp32 one) writes ``OUT/profile.{json,md}``;
``search-cost`` (CPU per request of each step the batch worker runs for a Search: decode, engine, gallery
search, reply; one thread, as each cdd-serve worker) writes ``OUT/search-cost.{json,md}``;
``all`` runs the CPU versions of the three and writes ``OUT/benchmarks.md`` (+ ``benchmarks.json`` and
``benchmarks-*.png``). Progress goes to stderr. Exit status: 0 done, 1 a benchmark failed while running, 2 bad input.
Also runnable as ``python -m serving.benchmarks``. ``--threads`` and ``--workers`` are the old spellings of
``--engine-threads`` and ``--decode-threads`` (the names cdd-index uses); they still work and print the new one.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cdd_common.deprecated_flags import add_deprecated_alias
from serving.backends import BackendUnavailable
from serving.benchmarks.engine import EngineBenchConfig, parse_backends
from serving.benchmarks.index import IndexBenchConfig
from serving.benchmarks.machine import usable_cores
from serving.benchmarks.search_cost import SearchCostConfig
from serving.benchmarks.serve import ServeBenchConfig
from serving.benchmarks.suite import run_all, run_engine, run_index, run_profile, run_search_cost, run_serve
from serving.bundle import BundleError
from serving.config import CPU_AFFINITY, ServeConfig
from serving.extras import missing_extra
from serving.index.errors import GalleryIndexError

__all__ = ["main"]


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,2,4") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag} {text!r}: expected positive integers")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_common(parser: argparse.ArgumentParser, out_default: str | None = None) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        required=out_default is None,
        default=out_default,
        help="folder for the JSON, markdown and PNG results",
    )
    parser.add_argument(
        "--engine-threads",
        type=int,
        default=usable_cores(),
        help="ONNX Runtime intra-op / torch threads (default: usable cores)",
    )
    add_deprecated_alias(parser, "--threads", new="--engine-threads {value}", dest="engine_threads", type=int)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images and vectors")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _add_engine_args(parser: argparse.ArgumentParser, backends: str, seconds: float, alias: bool) -> None:
    parser.add_argument("--backends", default=backends, help="auto | cpu | gpu | comma list of backends")
    parser.add_argument(
        "--batches", default="1,2,4,8,16,32,64", help="batch sizes (capped at the bundle max)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per point")
    flags = ("--engine-seconds", "--seconds") if alias else ("--engine-seconds",)
    parser.add_argument(
        *flags,
        dest="engine_seconds",
        type=float,
        default=seconds,
        help="seconds of timed calls per point (ignored with --iters)",
    )
    parser.add_argument("--iters", type=int, help="timed calls per point (instead of seconds)")


def _add_serve_args(parser: argparse.ArgumentParser, seconds: float, alias: bool) -> None:
    parser.add_argument("--concurrency", default="1,4,16", help="concurrent callers per load run (comma list)")
    parser.add_argument("--gallery-size", type=int, default=1280, help="random gallery items per cdd-serve")
    parser.add_argument("--load-processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--overload-clients", type=int, default=64, help="callers of the overload probe")
    parser.add_argument("--overload-cap", type=int, default=4, help="--max-concurrent-rpcs of the probe server")
    parser.add_argument("--instances", type=int, default=2,
                        help="also serve the last bundle with this many engine workers (0 = skip)")
    parser.add_argument("--serve-workers", type=int, default=0,
                        help="cdd-serve worker processes (0 = one per core); >1 also measures the demo as 1 process")
    parser.add_argument("--serve-affinity", choices=CPU_AFFINITY, default=ServeConfig.cpu_affinity,
                        help="cdd-serve's --cpu-affinity (auto: each worker on its own share of the cores)")
    parser.add_argument("--realistic", type=Path, default=Path("bundles/bench"),
                        help="realistic-cost bundle (make bench-bundle); skipped when absent")
    flags = ("--serve-seconds", "--seconds") if alias else ("--serve-seconds",)
    parser.add_argument(
        *flags, dest="serve_seconds", type=float, default=seconds, help="seconds of load per mode"
    )
    parser.add_argument("--max-batch", type=int, default=ServeConfig.max_batch,
                        help="server batch size (capped at bundle max; default: cdd-serve's)")
    parser.add_argument("--max-wait-ms", type=float, default=ServeConfig.max_wait_ms,
                        help="server batch window (default: cdd-serve's)")
    parser.add_argument("--k", type=int, default=10, help="results per search")


def _add_index_args(parser: argparse.ArgumentParser, max_build_s: float) -> None:
    parser.add_argument("--sizes", "--index-sizes", dest="sizes", default="10000,100000")
    parser.add_argument(
        "--types", "--index-types", dest="types", default="flat,ivf,hnsw,ivfpq,milvus-flat",
        help="FAISS types and milvus-flat / milvus-ivf / milvus-hnsw (embedded milvus-lite)",
    )
    parser.add_argument("--target-recall", type=float, default=0.95, help="recall@k of each operating point")
    parser.add_argument("--search-seconds", type=float, default=3.0, help="search time per (size, type)")
    parser.add_argument("--max-queries", type=int, default=200, help="queries per (size, type) at most")
    parser.add_argument("--recall-queries", type=int, default=50, help="queries used for recall")
    parser.add_argument(
        "--max-build-s",
        type=float,
        default=max_build_s,
        help="skip a build whose extrapolated time exceeds this (0 = never skip)",
    )
    parser.add_argument("--vectors", default="clustered", choices=("clustered", "uniform"))
    parser.add_argument("--nlist-max", type=int, default=256, help="IVF lists at most")
    parser.add_argument("--train-max", type=int, default=20_000, help="IVF / PQ training items at most")
    parser.add_argument("--pq-m", type=int, default=0, help="IVF-PQ sub-quantizers (0 = dim / 16)")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--batch-size", type=int, help="ingestion batch (default: the bundle's opt batch)")
    parser.add_argument("--decode-threads", type=int, default=2, help="image decoding threads for ingestion")
    add_deprecated_alias(parser, "--workers", new="--decode-threads {value}", dest="decode_threads", type=int)


def _add_serve_index_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offline-seconds", type=float, default=2.0, help="seconds timing the engine alone (for ratios)"
    )
    parser.add_argument(
        "--search-threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads while searching single queries (0 = FAISS default; builds use all cores)",
    )


def _search_threads(args: argparse.Namespace) -> int | None:
    if args.search_threads < 0:
        raise ValueError(f"--search-threads must be >= 0 (0 = FAISS default), found {args.search_threads}")
    return args.search_threads or None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdd-bench", description=__doc__.split("\n")[0].replace("``", ""))
    commands = parser.add_subparsers(dest="command", required=True)
    engine = commands.add_parser("engine", help="latency / throughput per bundle, backend and batch size")
    engine.add_argument("--bundle", type=Path, action="append", required=True, help="bundle (repeatable)")
    engine.add_argument(
        "--labels", help="comma list, one per --bundle; a bundle labelled 'teacher' is the teacher"
    )
    _add_engine_args(engine, "auto", 2.0, alias=True)
    _add_common(engine)
    serve = commands.add_parser("serve", help="gRPC serving QPS / latency with and without batching")
    serve.add_argument("--bundle", type=Path, required=True, help="the demo bundle")
    serve.add_argument("--target", help="host:port of a running server: only drive it (no servers started)")
    serve.add_argument("--images", type=Path, help="query images (default: synthetic pictures)")
    serve.add_argument("--backend", default="onnxruntime-cpu", help="engine backend of the servers")
    _add_serve_args(serve, 5.0, alias=True)
    _add_serve_index_args(serve)
    _add_common(serve)
    index = commands.add_parser("index", help="ingestion throughput; search latency / recall per index type")
    index.add_argument("--bundle", type=Path, required=True)
    index.add_argument("--images", type=Path, required=True, help="image folder to ingest")
    index.add_argument("--backend", default="auto", help="auto or one engine backend")
    index.add_argument("--engines", default="local", choices=("local", "local,ray"),
                       help="local,ray: also ingest with cdd-index build --engine ray (needs the [ray] extra)")
    index.add_argument("--ray-engine-threads", type=int, default=1,
                       help="engine threads of both builds in the Ray comparison (the other cores decode)")
    _add_index_args(index, 0.0)
    _add_serve_index_args(index)
    _add_common(index)
    profile = commands.add_parser("profile", help="where the time goes: ONNX Runtime CPU kernel time per op type")
    profile.add_argument("--bundle", type=Path, action="append", required=True, help="bundle (repeatable)")
    profile.add_argument("--labels", help="comma list, one per --bundle (default: folder names)")
    profile.add_argument("--batch", type=int, default=32, help="images per call")
    profile.add_argument("--runs", type=int, default=10, help="profiled calls per bundle")
    profile.add_argument("--warmup", type=int, default=3, help="unprofiled calls first")
    _add_common(profile)
    cost = commands.add_parser("search-cost", help="CPU per request of each batch-worker step of a Search")
    cost.add_argument("--bundle", type=Path, required=True)
    cost.add_argument("--images", type=Path, help="query images (default: synthetic pictures)")
    cost.add_argument("--batches", default="1,6,16", help="comma list of batch sizes")
    cost.add_argument("--rounds", type=int, default=7, help="rounds (the median is over them)")
    cost.add_argument("--calls", type=int, default=200, help="timed calls of each step per round")
    cost.add_argument("--gallery-size", type=int, default=1280, help="random gallery items")
    cost.add_argument("--k", type=int, default=10, help="results per query")
    cost.add_argument("--engine-threads", type=int, default=1,
                      help="ONNX Runtime intra-op threads (default 1: what each one-per-core cdd-serve worker gets)")
    cost.add_argument("--seed", type=int, default=0, help="seed of the random gallery and query pictures")
    cost.add_argument("--out", type=Path, required=True, help="folder for search-cost.json and .md")
    cost.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    every = commands.add_parser("all", help="CPU engine + serve + index benchmarks -> OUT/benchmarks.md")
    every.add_argument("--student", type=Path, default=Path("bundles/demo"))
    every.add_argument("--teacher", type=Path, default=Path("bundles/demo-teacher"))
    every.add_argument("--index-images", type=Path, default=Path("data/synthetic-reid/bounding_box_test"))
    every.add_argument("--backend", default="onnxruntime-cpu", help="engine for serving and ingestion")
    _add_engine_args(every, "onnxruntime-cpu,torch-cpu", 2.0, alias=False)
    _add_serve_args(every, 5.0, alias=False)
    _add_index_args(every, 150.0)
    _add_serve_index_args(every)
    _add_common(every, "docs")
    return parser


def _engine_cfg(args: argparse.Namespace) -> EngineBenchConfig:
    if args.engine_threads < 1 or args.warmup < 0:
        raise ValueError(f"--engine-threads must be >= 1 and --warmup >= 0, found {args.engine_threads} and "
                         f"{args.warmup}")
    return EngineBenchConfig(
        backends=parse_backends(args.backends),
        batches=_ints(args.batches, "--batches"),
        warmup=args.warmup,
        iters=args.iters,
        seconds=None if args.iters else args.engine_seconds,
        threads=args.engine_threads,
        seed=args.seed,
    )


def _serve_cfg(args: argparse.Namespace) -> ServeBenchConfig:
    return ServeBenchConfig(
        concurrency=_ints(args.concurrency, "--concurrency"),
        seconds=args.serve_seconds,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        k=args.k,
        offline_seconds=args.offline_seconds,
        gallery_size=args.gallery_size,
        load_processes=args.load_processes,
        overload_clients=args.overload_clients,
        overload_cap=args.overload_cap,
        instances=args.instances,
        workers=args.serve_workers,
        cpu_affinity=args.serve_affinity,
        seed=args.seed,
    )


def _index_cfg(args: argparse.Namespace) -> IndexBenchConfig:
    return IndexBenchConfig(
        sizes=_ints(args.sizes, "--sizes"),
        types=_names(args.types),
        max_queries=args.max_queries,
        search_seconds=args.search_seconds,
        recall_queries=args.recall_queries,
        target_recall=args.target_recall,
        max_build_s=args.max_build_s,
        offline_seconds=args.offline_seconds,
        search_threads=_search_threads(args),
        vectors=args.vectors,
        nlist_max=args.nlist_max,
        train_max=args.train_max,
        pq_m=args.pq_m or None,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        batch_size=args.batch_size,
        workers=args.decode_threads,
        seed=args.seed,
    )


def _shown(value: Any) -> str:
    """A path relative to the working directory when it lies inside it (reports carry no machine paths)."""
    if isinstance(value, Path):
        try:
            return value.resolve().relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            return value.as_posix()
    return str(value)


def _resolved_command(args: argparse.Namespace) -> str:
    """The command line with every option spelled out (defaults included)."""
    parts = ["python", "-m", "serving.benchmarks", args.command]
    for dest, value in vars(args).items():
        if dest in ("command", "log_level") or value is None:
            continue
        if dest == "engine_seconds" and getattr(args, "iters", None):
            continue
        for item in value if isinstance(value, list) else [value]:
            parts += [f"--{dest.replace('_', '-')}", _shown(item)]
    return shlex.join(parts)


def _engine_main(args: argparse.Namespace, commands: list[str]) -> dict[str, Any]:
    labels = list(_names(args.labels)) if args.labels else None
    return run_engine(args.bundle, _engine_cfg(args), args.out, labels, commands)


def _serve_main(args: argparse.Namespace, commands: list[str]) -> dict[str, Any]:
    return run_serve(
        args.bundle,
        _serve_cfg(args),
        args.out,
        realistic=args.realistic,
        images=args.images,
        target=args.target,
        backend=args.backend,
        threads=args.engine_threads,
        commands=commands,
    )


def _index_main(args: argparse.Namespace, commands: list[str]) -> dict[str, Any]:
    return run_index(
        args.bundle,
        args.images,
        _index_cfg(args),
        args.out,
        backend=args.backend,
        threads=args.engine_threads,
        commands=commands,
        ray_engine_threads=args.ray_engine_threads if args.engines == "local,ray" else None,
    )


def _profile_main(args: argparse.Namespace, commands: list[str]) -> dict[str, Any]:
    labels = list(_names(args.labels)) if args.labels else None
    return run_profile(args.bundle, labels, args.out, batch=args.batch, runs=args.runs, warmup=args.warmup,
                       threads=args.engine_threads, seed=args.seed, commands=commands)


def _search_cost_main(args: argparse.Namespace, commands: list[str]) -> dict[str, Any]:
    cfg = SearchCostConfig(batches=_ints(args.batches, "--batches"), rounds=args.rounds, calls=args.calls,
                           gallery_size=args.gallery_size, k=args.k, engine_threads=args.engine_threads,
                           seed=args.seed)
    return run_search_cost(args.bundle, cfg, args.out, images=args.images, commands=commands)


def _all_main(args: argparse.Namespace, commands: list[str]) -> dict[str, Any]:
    engine_cfg = _engine_cfg(args)
    return run_all(
        args.student,
        args.teacher,
        args.index_images,
        args.out,
        engine_cfg=engine_cfg,
        serve_cfg=_serve_cfg(args),
        index_cfg=_index_cfg(args),
        backend=args.backend,
        realistic=args.realistic,
        commands=commands,
    )


_COMMANDS: dict[str, Callable[[argparse.Namespace, list[str]], dict[str, Any]]] = {
    "engine": _engine_main,
    "serve": _serve_main,
    "index": _index_main,
    "profile": _profile_main,
    "search-cost": _search_cost_main,
    "all": _all_main,
}


def _summary(result: dict[str, Any]) -> str:
    status = {True: "met", False: "NOT met", None: "not measured"}
    lines = [
        f"{status[t['met']]:>12}: {t['target']} (measured {t['measured']!s:.6})" for t in result["targets"]
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``cdd-bench``: 0 done, 1 a benchmark failed while running, 2 bad input (bundle, folder, option)."""
    args = _parser().parse_args(None if argv is None else list(argv))
    if (message := missing_extra("cdd-bench", "train")) is not None:  # plots (matplotlib), torch engines
        print(message, file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = _COMMANDS[args.command](args, [_resolved_command(args)])
    except (BundleError, BackendUnavailable, GalleryIndexError, ValueError, OSError) as exc:
        print(f"cdd-bench {args.command}: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"cdd-bench {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    print(_summary(result))
    print(f"results in {_shown(args.out)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
