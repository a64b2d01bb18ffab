"""Run a benchmark and write its results: ``OUT/<name>.json``, ``<name>.md`` and ``<name>.png`` for one
benchmark (`run_engine`, `run_serve`, `run_index`), ``OUT/benchmarks.{md,json}`` + ``benchmarks-*.png`` for
the CPU suite (`run_all`). The markdown starts with the machine description and the exact commands."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdd_common.search_cost_table import search_cost_markdown
from serving.benchmarks import plots, report, serve_report
from serving.benchmarks.engine import (
    EngineBenchConfig,
    bench_engine,
    label_bundles,
    open_first,
    parse_backends,
)
from serving.benchmarks.index import IndexBenchConfig, bench_ingest, bench_search
from serving.benchmarks.ingest_split import bench_ingest_split, split_markdown
from serving.benchmarks.machine import describe_machine
from serving.benchmarks.op_profile import profile_bundle, profile_markdown
from serving.benchmarks.search_cost import SearchCostConfig, bench_search_cost
from serving.benchmarks.serve import ServeBenchConfig, bench_serve, bench_target
from serving.benchmarks.targets import evaluate_targets
from serving.bundle import load_bundle
from serving.index.build import items_from_folder

__all__ = ["SERVE_AUTO", "run_all", "run_engine", "run_index", "run_search_cost", "run_serve", "serve_bundles"]

_LOG = logging.getLogger("serving.benchmarks")
SERVE_AUTO = ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu", "torch-cuda", "torch-cpu")
"""Backends ``--backend auto`` tries, in order, for serving and ingestion."""
_QUERY_SOURCES = 64
_REALISTIC_INGEST_IMAGES = 64


def _header(title: str, machine: dict[str, Any], commands: Sequence[str]) -> list[str]:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"# {title}",
        "",
        f"Measured {stamp} on:",
        "",
        report.machine_markdown(machine),
        "",
        "Commands:",
        "",
        report.commands_markdown(commands),
        "",
    ]


def _write(out: Path, stem: str, result: dict[str, Any], markdown: str, images: dict[str, bytes]) -> None:
    for name, data in images.items():
        report.write_bytes_atomic(out / name, data)
    report.write_json_atomic(out / f"{stem}.json", result)
    report.write_text_atomic(out / f"{stem}.md", markdown)
    _LOG.info("wrote %s", ", ".join([*images, f"{stem}.json", f"{stem}.md"]))


def run_engine(
    bundles: Sequence[Path],
    cfg: EngineBenchConfig,
    out: Path,
    labels: Sequence[str] | None = None,
    commands: Sequence[str] = (),
) -> dict[str, Any]:
    """Engine benchmark of ``bundles`` -> ``out/engine.{json,md,png}``; returns the JSON dict."""
    machine = describe_machine()
    result = bench_engine(label_bundles(bundles, labels), cfg)
    targets = evaluate_targets(engine=result)
    full = {"machine": machine, "commands": list(commands), "engine": result, "targets": targets}
    markdown = "\n".join(
        [
            *_header("Engine benchmark", machine, commands),
            report.engine_markdown(result, "engine.png"),
            "## Targets",
            "",
            report.targets_markdown(targets),
        ]
    )
    _write(out, "engine", full, markdown, {"engine.png": plots.engine_plot(result)})
    return full


def run_profile(
    bundles: Sequence[Path],
    labels: Sequence[str] | None,
    out: Path,
    *,
    batch: int,
    runs: int,
    warmup: int,
    threads: int,
    seed: int,
    commands: Sequence[str] = (),
) -> dict[str, Any]:
    """Per-op-type ONNX Runtime CPU kernel time of each bundle -> ``out/profile.{json,md}``."""
    if labels is not None and len(labels) != len(bundles):
        raise ValueError(f"--labels has {len(labels)} entries for {len(bundles)} bundle(s); give one per --bundle")
    machine = describe_machine()
    names = list(labels) if labels is not None else [Path(b).name for b in bundles]
    profiles = [profile_bundle(Path(b), name, batch, runs, warmup, threads, seed)
                for b, name in zip(bundles, names, strict=True)]
    full = {"machine": machine, "commands": list(commands), "profile": profiles, "targets": []}
    markdown = "\n".join([*_header("Where the time goes (ONNX Runtime CPU profile)", machine, commands),
                          profile_markdown(profiles)])
    _write(out, "profile", full, markdown, {})
    return full


def run_search_cost(bundle: Path, cfg: SearchCostConfig, out: Path, *, images: Path | None = None,
                    commands: Sequence[str] = ()) -> dict[str, Any]:
    """CPU per request of each batch-worker step of a Search -> ``out/search-cost.{json,md}``."""
    machine = describe_machine()
    with tempfile.TemporaryDirectory(prefix="cdd-search-cost-") as workdir:
        result = bench_search_cost(bundle, cfg, Path(workdir), _query_sources(images))
    full = {"machine": machine, "commands": list(commands), "search_cost": result, "targets": []}
    markdown = "\n".join([*_header("What a Search costs besides gRPC (batch worker steps)", machine, commands),
                          search_cost_markdown(result)])
    _write(out, "search-cost", full, markdown, {})
    return full


def _query_sources(images: Path | None) -> list[Path]:
    if images is None:
        return []
    return [item.path for item in items_from_folder(images)[:_QUERY_SOURCES]]


def serve_bundles(demo: Path, realistic: Path | None) -> dict[str, Path]:
    """{"demo": demo, "realistic": realistic} (the realistic one only when given and present, else logged)."""
    bundles = {"demo": demo}
    if realistic is not None and (realistic / "manifest.json").is_file():
        bundles["realistic"] = realistic
    elif realistic is not None:
        _LOG.warning("no realistic bundle at %s (make bench-bundle); its serving targets are not measured",
                     realistic)
    return bundles


def run_serve(
    bundle: Path,
    cfg: ServeBenchConfig,
    out: Path,
    *,
    realistic: Path | None = None,
    images: Path | None = None,
    target: str | None = None,
    backend: str = "onnxruntime-cpu",
    threads: int = 1,
    commands: Sequence[str] = (),
) -> dict[str, Any]:
    """Serving benchmark -> ``out/serve.{json,md,png}``: bare servers and cdd-serve on ``bundle`` (and
    ``realistic``) side by side, or only the load against a running ``target``. Query JPEGs come from
    ``images`` when given."""
    machine = describe_machine()
    sources = _query_sources(images)
    if target is not None:
        result = bench_target(target, load_bundle(bundle), cfg, sources)
        full = {"machine": machine, "commands": list(commands), "serve": result, "targets": []}
        markdown = "\n".join([*_header("Serving benchmark (target)", machine, commands),
                              serve_report.target_markdown(result)])
        _write(out, "serve", full, markdown, {})
        return full
    result = bench_serve(serve_bundles(bundle, realistic), cfg, backend=backend, threads=threads, sources=sources)
    targets = evaluate_targets(serve=result)
    full = {"machine": machine, "commands": list(commands), "serve": result, "targets": targets}
    markdown = "\n".join(
        [
            *_header("Serving benchmark", machine, commands),
            serve_report.serve_markdown(result, "serve.png"),
            "",
            "## Targets",
            "",
            report.targets_markdown(targets),
        ]
    )
    _write(out, "serve", full, markdown, {"serve.png": plots.serve_plot(result)})
    return full


def run_index(
    bundle: Path,
    images: Path,
    cfg: IndexBenchConfig,
    out: Path,
    *,
    backend: str = "auto",
    threads: int = 1,
    commands: Sequence[str] = (),
    ray_engine_threads: int | None = None,
) -> dict[str, Any]:
    """Index benchmark (ingestion of ``images`` + synthetic search) -> ``out/index.{json,md,png}``; with
    ``ray_engine_threads`` also the Ray build beside the local one (`serving.benchmarks.index_ray`)."""
    manifest = load_bundle(bundle)
    names = SERVE_AUTO if backend == "auto" else parse_backends(backend)[:1]
    engine, name, _ = open_first(bundle, manifest, names, threads)
    machine = describe_machine()
    ingest, _ = bench_ingest(engine, manifest, images, cfg)
    del engine
    ingest["splits"] = {bundle.name: bench_ingest_split(bundle, manifest, images, name, threads, ingest["batch"],
                                                        cfg.offline_seconds, cfg.seed)}
    if ray_engine_threads is not None:
        from serving.benchmarks.index_ray import bench_ingest_ray

        ingest["ray"] = bench_ingest_ray(bundle, manifest, images, backend=name, batch=ingest["batch"],
                                         engine_threads=ray_engine_threads, cores=threads)
    search = bench_search(manifest.output.dim, cfg)
    targets = evaluate_targets(ingest=ingest)
    full = {
        "machine": machine,
        "commands": list(commands),
        "index": {"ingest": ingest, "search": search},
        "targets": targets,
    }
    markdown = "\n".join(
        [
            *_header("Index benchmark", machine, commands),
            report.index_markdown(ingest, search, "index.png"),
            *[line for label, split in ingest["splits"].items() for line in split_markdown(label, split)],
            *(_ray_markdown(ingest["ray"]) if "ray" in ingest else []),
            "## Targets",
            "",
            report.targets_markdown(targets),
        ]
    )
    _write(out, "index", full, markdown, {"index.png": plots.index_plot(search)})
    return full


def _ray_markdown(result: dict[str, Any]) -> list[str]:
    from serving.benchmarks.index_ray import ray_markdown

    return ray_markdown(result)


def run_all(
    student: Path,
    teacher: Path,
    index_images: Path,
    out: Path,
    *,
    engine_cfg: EngineBenchConfig,
    serve_cfg: ServeBenchConfig,
    index_cfg: IndexBenchConfig,
    backend: str = "onnxruntime-cpu",
    realistic: Path | None = None,
    commands: Sequence[str] = (),
) -> dict[str, Any]:
    """CPU engine (student + teacher), index and serving benchmarks -> ``out/benchmarks.{md,json}`` and
    ``out/benchmarks-{engine,index,serve}.png``; serving runs the student as the demo bundle and
    ``realistic`` (when present) as the realistic-cost one."""
    started = time.perf_counter()
    sources = _query_sources(index_images)  # a missing / empty folder fails here, before any benchmark
    bundles = label_bundles([student, teacher], roles=["student", "teacher"])
    manifest = bundles[0].manifest
    machine = describe_machine()
    engine = bench_engine(bundles, engine_cfg)
    runner, _, _ = open_first(student, manifest, parse_backends(backend), engine_cfg.threads)
    ingest, _ = bench_ingest(runner, manifest, index_images, index_cfg)
    del runner
    serve_set = serve_bundles(student, realistic)
    ingest["splits"] = {
        label: bench_ingest_split(path, load_bundle(path), index_images, backend, engine_cfg.threads,
                                  ingest["batch"], index_cfg.offline_seconds, index_cfg.seed,
                                  max_images=0 if label == "demo" else _REALISTIC_INGEST_IMAGES)
        for label, path in serve_set.items()
    }
    search = bench_search(manifest.output.dim, index_cfg)
    serve = bench_serve(serve_set, serve_cfg, backend=backend,
                        threads=engine_cfg.threads, sources=sources)
    targets = evaluate_targets(engine=engine, serve=serve, ingest=ingest)
    result = {
        "machine": machine,
        "commands": list(commands),
        "engine": engine,
        "serve": serve,
        "index": {"ingest": ingest, "search": search},
        "targets": targets,
        "seconds": time.perf_counter() - started,
    }
    images = {
        "benchmarks-engine.png": plots.engine_plot(engine),
        "benchmarks-serve.png": plots.serve_plot(serve),
        "benchmarks-index.png": plots.index_plot(search),
    }
    markdown = _all_markdown(result)
    _write(out, "benchmarks", result, markdown, images)
    return result


def _all_markdown(result: dict[str, Any]) -> str:
    ingest, search = result["index"]["ingest"], result["index"]["search"]
    return "\n".join(
        [
            *_header("Benchmarks", result["machine"], result["commands"]),
            "## Targets",
            "",
            # `make results` (training/results) renders this block again from benchmarks.json with its stamp
            "<!-- results:benchmark-targets -->",
            report.targets_markdown(result["targets"]),
            "<!-- /results:benchmark-targets -->",
            "## Engine: student vs teacher",
            "",
            report.engine_markdown(result["engine"], "benchmarks-engine.png"),
            "## Serving",
            "",
            serve_report.serve_markdown(result["serve"], "benchmarks-serve.png"),
            "",
            "## Gallery index",
            "",
            report.index_markdown(ingest, search, "benchmarks-index.png"),
            *[line for label, split in ingest.get("splits", {}).items() for line in split_markdown(label, split)],
            f"Total benchmark time: {result['seconds']:.0f} s.",
            "",
        ]
    )
