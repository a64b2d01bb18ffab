"""cdd-bench on the tiny bundle with tiny durations: result structure, invariants, files (no timing
thresholds)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from serving.benchmarks.__main__ import main
from serving.benchmarks.engine import EngineBenchConfig, batch_sizes_for, parse_backends
from serving.benchmarks.index import IndexBenchConfig, bench_search
from serving.benchmarks.latency import percentiles_ms
from serving.benchmarks.serve import ServeBenchConfig
from serving.benchmarks.suite import run_engine, run_index, run_serve
from serving.benchmarks.targets import evaluate_targets

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TINY_ALL_OPTIONS = (
    "--backends onnxruntime-cpu --batches 1,2 --warmup 1 --iters 2 --concurrency 2 --serve-seconds 0.5 "
    "--offline-seconds 0.2 --max-batch 4 --index-sizes 300 --index-types flat,ivf --search-seconds 0.05 "
    "--max-queries 10 --engine-threads 1 --gallery-size 50 --overload-clients 6 --overload-cap 1 --instances 0 "
    "--log-level WARNING"
)


def _check_latency(summary: dict[str, Any]) -> None:
    values = [summary[key] for key in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")]
    assert all(math.isfinite(v) and v > 0 for v in values), summary
    assert (
        summary["min_ms"] <= summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    )
    assert summary["calls"] >= 1


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == _PNG_MAGIC
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 100


def _check_files(out: Path, stem: str) -> dict[str, Any]:
    _check_png(out / f"{stem}.png")
    assert (out / f"{stem}.md").read_text().startswith("#")
    return json.loads((out / f"{stem}.json").read_text())


def test_percentiles_known_answer() -> None:
    summary = percentiles_ms([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary["calls"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p90_ms"] == pytest.approx(90.1)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["mean_ms"] == pytest.approx(50.5)
    with pytest.raises(ValueError, match="no latency samples"):
        percentiles_ms([])


def test_backend_names_and_batch_sizes(tiny_manifest: Any) -> None:
    assert parse_backends("cpu") == ("onnxruntime-cpu", "torch-cpu", "torch-compiled-cpu")
    assert parse_backends("onnxruntime-cpu, torch-cpu,onnxruntime-cpu") == ("onnxruntime-cpu", "torch-cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        parse_backends("onnxruntime-gpu")
    # tiny bundle: batch.max == 8 -> sizes above it are replaced by the max itself
    assert batch_sizes_for(tiny_manifest, (1, 2, 4, 16, 64)) == [1, 2, 4, 8]
    assert batch_sizes_for(tiny_manifest, (1, 2)) == [1, 2]


def test_engine_student_and_teacher(tiny_bundle: Path, tmp_path: Path) -> None:
    cfg = EngineBenchConfig(
        backends=("onnxruntime-cpu", "torch-cpu", "tensorrt"), batches=(1, 2), warmup=1, iters=3, seconds=None
    )
    full = run_engine([tiny_bundle, tiny_bundle], cfg, tmp_path, labels=["student", "teacher"])
    assert _check_files(tmp_path, "engine")["engine"]["config"]["iters"] == 3
    result = full["engine"]
    assert [(b["label"], b["role"]) for b in result["bundles"]] == [
        ("student", "student"),
        ("teacher", "teacher"),
    ]
    assert {(r["bundle"], r["backend"]) for r in result["results"]} == {
        (label, backend) for label in ("student", "teacher") for backend in ("onnxruntime-cpu", "torch-cpu")
    }
    for run in result["results"]:
        assert [p["batch"] for p in run["points"]] == [1, 2]
        for point in run["points"]:
            _check_latency(point)
            assert point["calls"] == 3
            assert math.isfinite(point["images_per_s"]) and point["images_per_s"] > 0
    # TensorRT cannot run here: listed for both bundles, with the reason
    assert {u["bundle"] for u in result["unavailable"] if u["backend"] == "tensorrt"} == {
        "student",
        "teacher",
    }
    assert all(u["reason"] for u in result["unavailable"])
    ratios = result["ratios"]
    assert {(r["backend"], r["batch"]) for r in ratios} == {
        (backend, batch) for backend in ("onnxruntime-cpu", "torch-cpu") for batch in (1, 2)
    }
    for row in ratios:
        assert row["throughput_ratio"] == pytest.approx(
            row["student_images_per_s"] / row["teacher_images_per_s"]
        )
        assert row["flops_ratio"] is None  # the tiny bundle's manifest has no cost
    targets = {t["id"]: t for t in full["targets"]}
    assert targets["student_throughput"]["met"] is None  # no batch-32 point on a max-batch-8 bundle
    assert targets["student_latency"]["measured"] == pytest.approx(
        next(r["latency_ratio"] for r in ratios if r["backend"] == "onnxruntime-cpu" and r["batch"] == 1)
    )
    markdown = (tmp_path / "engine.md").read_text()
    assert "| bundle | backend | batch | p50 ms | p90 ms | p99 ms | images/s |" in markdown
    assert "| backend | batch | student img/s | teacher img/s | speed-up |" in markdown
    assert "tensorrt (student):" in markdown


def test_serve_servers_side_by_side(tiny_bundle: Path, gallery_images: Path, tmp_path: Path) -> None:
    # 4 closed-loop clients, 2 per worker process, and batches of at most 2 in a 1 s window: a batching server
    # closes its batches full (not by time) while both its clients wait, so its mean batch is above 1 however
    # slowly the clients run (the one-process server has all 4 clients)
    cfg = ServeBenchConfig(concurrency=(4,), seconds=0.5, max_batch=2, max_wait_ms=1000.0, k=3, offline_seconds=0.2,
                           gallery_size=50, payloads=4, overload_clients=8, overload_cap=1, instances=0, workers=2)
    full = run_serve(tiny_bundle, cfg, tmp_path, realistic=tmp_path / "absent", images=gallery_images,
                     backend="onnxruntime-cpu", threads=1)
    _check_files(tmp_path, "serve")
    result = full["serve"]
    assert result["payload_source"].startswith("folder images") and set(result["bundles"]) == {"demo"}
    servers = result["servers"]
    assert list(servers) == ["bare (sync)", "bare (aio)", "demo batched", "demo unbatched", "demo batched, 1 process"]
    assert [servers[name].get("workers") for name in list(servers)[2:]] == [2, 2, 1]
    for name, server in servers.items():
        assert list(server["rows"]) == ["4"]
        for run in server["rows"].values():
            assert run["codes"] == {"OK": run["requests"]} and run["requests"] > 0, (name, run["codes"])
            assert run["qps"] == pytest.approx(run["requests"] / run["seconds"]) and run["seconds"] >= cfg.seconds
            assert 0 < run["generator_cpu_share"] <= 1
            _check_latency(run["latency"])
            assert run["server_cpu_s"] > 0  # the server process did the work, not the generator
            assert run["server_switches_per_request"]["voluntary"] > 0
            if server["kind"] == "bare":
                assert run["mean_batch"] is None
            elif server["kind"] == "unbatched":
                assert run["mean_batch"] == 1.0
            else:
                assert 1.0 < run["mean_batch"] <= 2.0  # it batched: 1.0 is a server that never does
    assert result["offline"]["demo"]["batch"] == 2 and result["offline"]["demo"]["images_per_s"] > 0
    peak = max(run["qps"] for run in servers["demo batched"]["rows"].values())
    bare = max(run["qps"] for run in servers["bare (sync)"]["rows"].values())
    assert result["ratios"]["demo_over_bare"] == pytest.approx(peak / bare)
    tail = result["tail"]
    assert tail["bundle"] == "demo" and tail["rate"] == pytest.approx(peak * cfg.saturation_fraction)
    assert tail["p99_over_p50"] == pytest.approx(tail["latency"]["p99_ms"] / tail["latency"]["p50_ms"])
    probe = result["overload"]
    assert probe["generator_codes"].get("RESOURCE_EXHAUSTED", 0) > 0  # 8 callers against a cap of 1
    assert set(probe["generator_codes"]) <= {"OK", "RESOURCE_EXHAUSTED"} and probe["metrics_match"] is True
    targets = {t["id"]: t for t in full["targets"]}
    assert set(targets) == {"demo_vs_bare", "realistic_vs_offline", "batching_helps", "tail_at_saturation"}
    assert targets["realistic_vs_offline"]["met"] is None  # no realistic bundle here
    demo_vs_bare = targets["demo_vs_bare"]
    assert demo_vs_bare["measured"] == pytest.approx(peak / bare) and demo_vs_bare["threshold"] == 0.5
    assert demo_vs_bare["met"] is (demo_vs_bare["measured"] >= 0.5)
    assert "| server | clients | QPS | p50 ms |" in (tmp_path / "serve.md").read_text()


def test_index_ingest_and_search(tiny_bundle: Path, gallery_images: Path, tmp_path: Path) -> None:
    cfg = IndexBenchConfig(
        sizes=(1000,),
        types=("flat", "hnsw", "milvus-flat"),
        max_queries=20,
        search_seconds=0.2,
        recall_queries=20,
        offline_seconds=0.3,
        batch_size=4,
    )
    full = run_index(tiny_bundle, gallery_images, cfg, tmp_path, backend="onnxruntime-cpu", threads=1)
    _check_files(tmp_path, "index")
    ingest, search = full["index"]["ingest"], full["index"]["search"]
    assert ingest["images"] == 20 and ingest["skipped"] == 0 and ingest["batch"] == 4
    assert ingest["busy_fraction"] == pytest.approx(
        ingest["images_per_s"] / ingest["offline"]["images_per_s"]
    )
    assert search["dim"] == 16 and search["skipped"] == []
    rows = {row["type"]: row for row in search["rows"]}
    assert set(rows) == {"flat", "hnsw", "milvus-flat"}
    assert rows["flat"]["recall"] == 1.0 and rows["milvus-flat"]["recall"] == 1.0
    point = rows["hnsw"]["operating_point"]  # tuned on other queries, then measured on these
    assert point["parameter"] == "ef_search" and point["reached"] and point["recall_at_k"] >= 0.95
    assert rows["hnsw"]["options"]["ef_search"] == point["value"] and rows["hnsw"]["recall"] >= 0.9
    assert rows["milvus-flat"]["search"]["engine"] == "milvus" and rows["flat"]["operating_point"] is None
    for row in rows.values():
        assert row["size"] == 1000 and row["build_s"] > 0 and row["qps"] > 0
        _check_latency(row["latency"])
    markdown = (tmp_path / "index.md").read_text()
    assert "| size | type | build s | p50 ms | p99 ms | QPS (1 thread) | recall@10 |" in markdown
    assert "| images | skipped | seconds | ingest images/s |" in markdown


def test_index_budget_and_subsample_training() -> None:
    cfg = IndexBenchConfig(
        sizes=(300, 600),
        types=("flat", "ivf"),
        max_queries=5,
        search_seconds=0.01,
        max_build_s=1e-9,
        train_max=400,
    )
    result = bench_search(8, cfg)
    # flat at 600 is extrapolated over budget and skipped; ivf (training capped) never is
    assert [(r["size"], r["type"]) for r in result["rows"]] == [(300, "flat"), (300, "ivf"), (600, "ivf")]
    assert [(s["size"], s["type"]) for s in result["skipped"]] == [(600, "flat")]
    assert "estimated build" in result["skipped"][0]["reason"]
    ivf_300, ivf_600 = result["rows"][1], result["rows"][2]
    assert ivf_300["train_items"] == 300 and ivf_600["train_items"] == 400
    assert ivf_300["search"]["nlist"] == 7  # min(4 sqrt(300), 300 // 39, nlist_max)
    assert ivf_600["search"]["nlist"] == 10  # trained on 400 items: 400 // 39


def test_targets_known_answers() -> None:
    engine = {
        "ratios": [
            {
                "backend": "onnxruntime-cpu",
                "batch": 32,
                "throughput_ratio": 3.0,
                "student_images_per_s": 300.0,
                "teacher_images_per_s": 100.0,
            },
            {
                "backend": "onnxruntime-cpu",
                "batch": 1,
                "latency_ratio": 1.5,
                "student_p50_ms": 2.0,
                "teacher_p50_ms": 3.0,
            },
        ]
    }
    def rows(*qps: float) -> dict[str, Any]:
        return {"rows": {str(i): {"qps": q} for i, q in enumerate(qps)}}

    serve = {
        "config": {"max_batch": 16, "saturation_fraction": 0.8},
        "offline": {"realistic": {"images_per_s": 100.0}},
        "servers": {"bare (sync)": rows(100.0, 300.0), "demo batched": rows(140.0, 90.0),
                    "realistic batched": rows(50.0, 86.0), "realistic unbatched": rows(86.0)},
        "tail": {"bundle": "realistic", "p99_over_p50": 2.5, "latency": {"p50_ms": 10.0, "p99_ms": 25.0}},
    }
    ingest = {"busy_fraction": 0.9, "images_per_s": 90.0, "offline": {"images_per_s": 100.0}, "batch": 16}
    met = {t["id"]: t["met"] for t in evaluate_targets(engine, serve, ingest)}
    assert met == {
        "student_throughput": True,
        "student_latency": False,
        "demo_vs_bare": False,  # 140 / 300 (peaks)
        "realistic_vs_offline": True,  # 86 / 100
        "batching_helps": False,  # 86 / 86 is not > 1
        "tail_at_saturation": False,  # 2.5 > 2
        "int8_throughput_small": None,  # no int8 bundle benchmarked
        "int8_throughput_256x128": None,
        "ingest_busy": True,
    }


def test_all_writes_the_report(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "docs"
    paths = [
        "--student",
        str(tiny_bundle),
        "--teacher",
        str(tiny_bundle),
        "--index-images",
        str(gallery_images),
    ]
    code = main(["all", *paths, "--realistic", str(tmp_path / "absent"), "--out", str(out),
                 *_TINY_ALL_OPTIONS.split()])
    assert code == 0
    result = json.loads((out / "benchmarks.json").read_text())
    assert set(result) >= {"machine", "commands", "engine", "serve", "index", "targets", "seconds"}
    assert result["commands"][0].startswith("python -m serving.benchmarks all --student ")
    assert result["machine"]["usable_cores"] >= 1 and result["machine"]["cpu"]
    assert len(result["engine"]["ratios"]) == 2  # student vs teacher at batches 1 and 2
    assert {t["id"] for t in result["targets"]} == {
        "student_throughput",
        "student_latency",
        "demo_vs_bare",
        "realistic_vs_offline",
        "int8_throughput_small",
        "int8_throughput_256x128",
        "batching_helps",
        "tail_at_saturation",
        "ingest_busy",
    }
    for name in ("engine", "serve", "index"):
        _check_png(out / f"benchmarks-{name}.png")
    markdown = (out / "benchmarks.md").read_text()
    for heading in ("## Targets", "## Engine: student vs teacher", "## Serving", "## Gallery index"):
        assert heading in markdown
    assert "![engine latency and throughput](benchmarks-engine.png)" in markdown
    assert "| target | measured | threshold | status | detail |" in markdown
    assert "results in" in capsys.readouterr().out


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["engine", "--bundle", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "manifest" in capsys.readouterr().err
    assert (
        main(
            [
                "index",
                "--bundle",
                str(tmp_path),
                "--images",
                str(tmp_path),
                "--sizes",
                "1,x",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--sizes" in capsys.readouterr().err


def test_import_pulls_no_torch() -> None:
    code = "import sys, serving.benchmarks.__main__; sys.exit(int('torch' in sys.modules or 'faiss' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
