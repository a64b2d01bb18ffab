"""``cdd-bench engine`` with fp32 teacher, fp32 student and int8 student side by side (real tiny bundles)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.benchmarks.__main__ import main
from serving.benchmarks.targets import evaluate_targets
from serving.bundle import load_bundle


@pytest.fixture(scope="module")
def teacher_bundle(teacher_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.__main__ import main as export_main

    out = tmp_path_factory.mktemp("teacher-bundle") / "teacher"
    assert export_main(["--run", str(teacher_run), "--out", str(out), "--tensorrt", "off", "--set",
                        "batch.max=32"]) == 0
    return out


def test_engine_shows_teacher_student_and_int8_student(student_bundles, teacher_bundle: Path,
                                                      tmp_path: Path) -> None:
    code = main(["engine", "--bundle", str(teacher_bundle), "--bundle", str(student_bundles.fp32), "--bundle",
                 str(student_bundles.int8), "--labels", "teacher,student,student-int8", "--backends",
                 "onnxruntime-cpu", "--batches", "1,16", "--iters", "3", "--warmup", "1", "--engine-threads", "1",
                 "--out", str(tmp_path)])
    assert code == 0
    full = json.loads((tmp_path / "engine.json").read_text())
    result = full["engine"]
    assert [(b["label"], b["role"], b["precision"]) for b in result["bundles"]] == [
        ("teacher", "teacher", "fp32"), ("student", "student", "fp32"), ("student-int8", "student", "int8")]
    rows = result["int8_ratios"]
    assert [(r["int8"], r["fp32"], r["batch"]) for r in rows] == [("student-int8", "student", 1),
                                                                    ("student-int8", "student", 16)]
    points = {(r["bundle"], p["batch"]): p for r in result["results"] for p in r["points"]}
    gate = load_bundle(student_bundles.int8).parity["int8"]
    for row in rows:
        q, f = points[("student-int8", row["batch"])], points[("student", row["batch"])]
        assert row["throughput_ratio"] == pytest.approx(q["images_per_s"] / f["images_per_s"])
        assert row["latency_ratio"] == pytest.approx(f["p50_ms"] / q["p50_ms"])
        assert (row["map_fp32"], row["map_int8"], row["input_hw"]) == (gate["map_fp32"], gate["map_int8"], [64, 32])
    # both students are compared with the teacher too
    assert {r["student"] for r in result["ratios"]} == {"student", "student-int8"}
    markdown = (tmp_path / "engine.md").read_text()
    assert "| int8 bundle | fp32 bundle | backend | batch | int8 img/s | fp32 img/s | speed-up |" in markdown
    assert "| student-int8 | student | onnxruntime-cpu | 16 |" in markdown


def test_int8_targets_known_answers() -> None:
    def row(hw: list[int], ratio: float, batch: int = 32) -> dict:
        return {"int8": "q", "fp32": "f", "backend": "onnxruntime-cpu", "batch": batch, "input_hw": hw,
                "throughput_ratio": ratio, "int8_images_per_s": 100.0 * ratio, "fp32_images_per_s": 100.0,
                "map_fp32": 50.7, "map_int8": 50.5, "map_drop": 0.2}

    engine = {"ratios": [], "int8_ratios": [row([64, 32], 1.6), row([256, 128], 1.9), row([256, 128], 9.0, 16)]}
    targets = {t["id"]: t for t in evaluate_targets(engine)}
    assert (targets["int8_throughput_small"]["met"], targets["int8_throughput_small"]["measured"]) == (True, 1.6)
    assert (targets["int8_throughput_256x128"]["met"], targets["int8_throughput_256x128"]["measured"]) == (False, 1.9)
    assert "mAP 50.50 vs 50.70 (cost 0.20 points)" in targets["int8_throughput_small"]["detail"]
    none = {t["id"]: t["met"] for t in evaluate_targets({"ratios": [], "int8_ratios": []})}
    assert none["int8_throughput_small"] is None and none["int8_throughput_256x128"] is None


def test_profile_says_where_the_time_goes(student_bundles, tmp_path: Path) -> None:
    code = main(["profile", "--bundle", str(student_bundles.fp32), "--bundle", str(student_bundles.int8),
                 "--labels", "fp32,int8", "--batch", "4", "--runs", "3", "--warmup", "1", "--engine-threads", "1",
                 "--out", str(tmp_path)])
    assert code == 0
    fp32, int8 = json.loads((tmp_path / "profile.json").read_text())["profile"]
    assert (fp32["precision"], int8["precision"], fp32["runs"], int8["batch"]) == ("fp32", "int8", 3, 4)
    for profile in (fp32, int8):
        assert sum(op["share"] for op in profile["ops"]) == pytest.approx(1.0)
        assert sum(profile["groups"].values()) == pytest.approx(1.0)
        assert profile["ms_per_run"] >= sum(op["ms_per_run"] for op in profile["ops"]) * 0.99
    fp32_ops, int8_ops = {op["op"] for op in fp32["ops"]}, {op["op"] for op in int8["ops"]}
    assert fp32_ops & {"Conv", "FusedConv"} and not fp32_ops & {"QLinearConv", "QuantizeLinear"}
    assert int8_ops & {"QLinearConv", "QuantizeLinear", "ConvInteger"}
    assert "### int8 (int8, 64x32, batch 4, 1 threads)" in (tmp_path / "profile.md").read_text()
