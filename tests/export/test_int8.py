"""``cdd-export --precision int8`` on a real (2-epoch) tiny student run: the quantised graph, its gate, the
manifest record, and failing gates that write nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.__main__ import main
from export.config import ExportConfigError, load_export_config
from export.gate_images import calibration_images, gate_images
from export.int8_export import _gate_fastest
from export.int8_gate import Int8GateError, int8_gate, retrieval_map, retrieval_set
from export.int8_quantize import QuantisedModel, excluded_nodes, prepare, quantise
from export.onnx_export import onnxruntime_embedder
from export.parity import compare, take_batch
from serving.bundle import load_bundle
from tiny_training import TINY_INT8_EXPORT
from training.data.layouts import load_dataset

# A tiny run's timing needs no precision; the tiny query set has 15 queries.
_FAST = TINY_INT8_EXPORT
_QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearAdd"}


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def int8_and_fp32(student_bundles) -> tuple[Path, Path]:
    return student_bundles.int8, student_bundles.fp32


def test_int8_export_passes_its_gate_and_records_it(int8_and_fp32: tuple[Path, Path], tiny_reid_root: Path) -> None:
    manifest = load_bundle(int8_and_fp32[0], verify=True)
    assert manifest.precision == "int8"
    gate = manifest.parity["int8"]
    assert gate["tolerance"] == {"min_cosine": 0.97, "max_map_drop": 2.0}  # TINY_INT8_EXPORT
    # the recorded numbers are those of the shipped int8 graph against the fp32 graph, recomputed here with
    # plain sessions on the gate's images (64, seed 0) and retrieval set (all of it, 16 images a call)
    int8, fp32 = (onnxruntime_embedder(bundle / "model.onnx") for bundle in int8_and_fp32)
    images = gate_images("market1501", str(tiny_reid_root), (64, 32), count=64, seed=0)
    cosines = [compare(fp32(take_batch(images, size)), int8(take_batch(images, size))).min_cosine
               for size in (1, 7, 16)]
    assert gate["min_cosine"] == pytest.approx(min(cosines), abs=1e-5) and min(cosines) < 0.99999  # int8 differs
    data = retrieval_set("market1501", str(tiny_reid_root), (64, 32), limit=0, seed=0)
    assert gate["map_fp32"] == pytest.approx(retrieval_map(fp32, data, 16), abs=1e-3)
    assert gate["map_int8"] == pytest.approx(retrieval_map(int8, data, 16), abs=1e-3)
    assert gate["map_drop"] == pytest.approx(gate["map_fp32"] - gate["map_int8"])
    assert gate["eval_queries"] == 15 and gate["batch_sizes"] == [1, 7, 16]
    assert manifest.parity["onnxruntime"]["max_abs_err"] <= 1e-4  # the fp32 graph was gated before quantising
    q = manifest.quantization
    train = len(load_dataset("market1501", tiny_reid_root).train)  # fewer than the 256 requested: all of them
    assert q["calibration"] == {"split": "train", "images": train, "requested": 256, "seed": 0, "method": "minmax"}
    candidates = ["int8-qdq-first", "int8-qdq-none", "int8-qoperator-first", "int8-qoperator-none"]
    assert q["candidates_timed"] == candidates and q["candidate"] == f"int8-{q['format']}-{q['exclude']}"
    assert q["weights"] == "int8 per-channel (symmetric)" and q["exclude_setting"] == "auto"
    assert len(q["excluded_nodes"]) == {"first": 1, "none": 0}[q["exclude"]]
    assert set(q["timing"]["images_per_second"]) == {"fp32", *candidates}
    seconds = q["timing"]["seconds_per_batch"]  # the chosen one is the fastest unless faster ones failed the gate
    assert [c for c in candidates if seconds[c] < seconds[q["candidate"]]] == [f.split(":")[0]
                                                                               for f in q["candidates_failed"]]
    assert q["timing"]["batch"] == 32
    per_s = q["timing"]["images_per_second"]
    assert q["speedup_vs_fp32"] == pytest.approx(per_s[q["candidate"]] / per_s["fp32"], abs=1e-4)
    export_config = manifest.provenance["export_config"]
    assert export_config["precision"] == "int8" and export_config["int8"]["calibration_seed"] == 0


def test_int8_bundle_keeps_the_contract(int8_and_fp32: tuple[Path, Path], tiny_reid_root: Path) -> None:
    int8, fp32 = int8_and_fp32
    manifest, reference = load_bundle(int8), load_bundle(fp32)
    assert manifest.backends == {"onnxruntime": "model.onnx"} and sorted(manifest.files) == ["model.onnx"]
    assert (manifest.input, manifest.output, manifest.preprocess) == (reference.input, reference.output,
                                                                     reference.preprocess)
    assert _ops(int8 / "model.onnx") & _QUANTISED_OPS and not _ops(fp32 / "model.onnx") & _QUANTISED_OPS
    graph = onnx.load(str(int8 / "model.onnx")).graph
    float_weights = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    weight_layers = [n for n in graph.node if n.op_type in ("Conv", "QLinearConv", "Gemm", "QGemm")]
    kept_float = [n.name for n in weight_layers if n.op_type == "Conv" and n.input[1] in float_weights]
    assert kept_float == manifest.quantization["excluded_nodes"]  # exactly the excluded layers stay float
    # The pixels' cast and normalisation (one Mul + Add) stay float in either format: no QLinear op and no
    # dequantised input in front of the first weight layer.
    first_weight = next(i for i, n in enumerate(graph.node) if n in weight_layers)
    in_front = graph.node[:first_weight]
    dequantised = {out for n in in_front if n.op_type == "DequantizeLinear" for out in n.output}
    normalisation = [n for n in in_front if n.op_type in ("Mul", "Add", "QLinearMul", "QLinearAdd")]
    assert [n.op_type for n in normalisation] == ["Mul", "Add"]
    assert not any(set(n.input) & dequantised for n in normalisation)
    session = ort.InferenceSession(str(int8 / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, out.name, out.type) == ("images", "tensor(uint8)", "embeddings", "tensor(float)")
    images = gate_images("market1501", str(tiny_reid_root), (64, 32), count=20, seed=1)
    found = session.run(["embeddings"], {"images": images})[0]
    np.testing.assert_allclose(np.linalg.norm(found, axis=1), 1.0, atol=1e-5)
    assert compare(onnxruntime_embedder(fp32 / "model.onnx")(images), found).min_cosine > 0.98
    assert "precision" not in json.loads((fp32 / "manifest.json").read_text())  # fp32 manifests are unchanged


def test_failing_gate_writes_nothing(student_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["--run", str(student_run), "--out", str(tmp_path / "b"), "--precision", "int8", *_FAST,
                 "--set", "gates.int8.min_cosine=1.0"])
    assert code == 3
    err = capsys.readouterr().err
    assert "cosine between int8 and fp32 embeddings" in err and "< gates.int8.min_cosine 1.00000" in err
    assert "int8.calibration_images=512, now 256" in err and "int8.exclude=first_last" in err
    assert list(tmp_path.iterdir()) == []


def test_speed_gate_refuses_an_int8_graph_that_is_not_fast_enough(student_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    code = main(["--run", str(student_run), "--out", str(tmp_path / "b"), "--precision", "int8", *_FAST,
                 "--set", "gates.int8.min_speedup=1000"])
    assert code == 3
    err = capsys.readouterr().err
    assert re.search(r"int8-\w+-\w+ runs \d+ images/s vs fp32 \d+ at batch 32 on this CPU, \d+\.\d\dx < "
                     r"gates\.int8\.min_speedup 1000\.00; ship the fp32 bundle", err), err
    assert list(tmp_path.iterdir()) == []


def test_map_gate_names_the_number_and_the_knob(int8_and_fp32: tuple[Path, Path], tiny_reid_root: Path) -> None:
    """Real embedders with different retrieval accuracy: the fp32 graph on upright and on upside-down images
    (whichever scores lower plays the candidate); both have cosine > -1, so mAP alone decides."""
    fp32 = onnxruntime_embedder(int8_and_fp32[1] / "model.onnx")
    data = retrieval_set("market1501", str(tiny_reid_root), (64, 32), limit=0, seed=0)
    upside_down = lambda images: fp32(np.ascontiguousarray(images[:, ::-1]))
    (low, worse), (high, better) = sorted([(retrieval_map(fp32, data, 16), fp32),
                                           (retrieval_map(upside_down, data, 16), upside_down)], key=lambda t: t[0])
    assert high - low > 0.5
    images = gate_images("market1501", str(tiny_reid_root), (64, 32), count=8, seed=0)
    config = load_export_config(["gates.int8.min_cosine=-1"])
    expected = (rf"mAP {low:.2f} vs fp32 {high:.2f} on 15 queries, a drop of {high - low:.2f} points > "
                r"gates\.int8\.max_map_drop 0\.50; .*int8\.calibration_method=entropy\|percentile, now minmax")
    with pytest.raises(Int8GateError, match=expected):
        int8_gate(better, worse, images, (1, 8), data, 16, config.gates.int8, config.int8)
    passed = int8_gate(better, better, images, (1, 8), data, 16, config.gates.int8, config.int8)
    assert passed["map_drop"] == 0.0 and passed["min_cosine"] == pytest.approx(1.0)


def test_excluded_layers_stay_float(int8_and_fp32: tuple[Path, Path], tiny_reid_root: Path, tmp_path: Path) -> None:
    prepared = prepare(int8_and_fp32[1] / "model.onnx", tmp_path / "prepared.onnx")
    exclude = excluded_nodes(prepared, "first_last")
    graph = onnx.load(str(prepared)).graph
    weight_layers = [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert exclude == (weight_layers[0], weight_layers[-1]) and excluded_nodes(prepared, "none") == ()
    images = calibration_images("market1501", str(tiny_reid_root), (64, 32), 8, 0)
    model = quantise(prepared, tmp_path / "q.onnx", "qoperator", images, "minmax", True, False, exclude,
                     tmp_path / "ranges.json")
    nodes = {n.name: n.op_type for n in onnx.load(str(model.path)).graph.node}
    assert nodes[exclude[0]] == "Conv" and "QLinearConv" in nodes.values()
    assert (tmp_path / "ranges.json").is_file()


def test_gate_falls_back_to_the_next_fastest_candidate(int8_and_fp32: tuple[Path, Path], teacher_run: Path,
                                                      tiny_reid_root: Path, tmp_path: Path) -> None:
    """Two real graphs as candidates: another network (fails the cosine gate) timed faster than the student's
    int8 graph (passes): the slower one is chosen and the failure is recorded."""
    assert main(["--run", str(teacher_run), "--out", str(tmp_path / "other"), "--tensorrt", "off", *_FAST]) == 0
    fp32 = int8_and_fp32[1] / "model.onnx"
    models = {"other": QuantisedModel(tmp_path / "other" / "model.onnx", "qdq", ()),
              "same": QuantisedModel(int8_and_fp32[0] / "model.onnx", "qdq", ())}
    timing = {"seconds_per_batch": {"other": 0.1, "same": 0.2}}
    data = retrieval_set("market1501", str(tiny_reid_root), (64, 32), limit=0, seed=0)
    images = gate_images("market1501", str(tiny_reid_root), (64, 32), count=8, seed=0)
    config = load_export_config(["batch.max=16", "gates.int8.max_map_drop=2.0"])  # as TINY_INT8_EXPORT
    name, numbers, failures = _gate_fastest(models, timing, onnxruntime_embedder(fp32), images, data, config)
    assert name == "same" and numbers["images"] == 8 and numbers["eval_queries"] == 15
    assert len(failures) == 1 and failures[0].startswith("other: int8 gate failed: cosine")
    with pytest.raises(Int8GateError, match=r"all 2 int8 candidates failed \(other, same\); the last one: .*cosine"):
        _gate_fastest(models, timing, onnxruntime_embedder(fp32), images, data,
                      load_export_config(["batch.max=16", "gates.int8.max_map_drop=2.0", "gates.int8.min_cosine=1.0"]))


def test_int8_config_is_checked() -> None:
    config = load_export_config(["precision=int8", "int8.calibration_images=64", "int8.format=qdq",
                                 "gates.int8.max_map_drop=1.5"])
    assert (config.precision, config.int8.calibration_images, config.int8.format) == ("int8", 64, "qdq")
    assert config.gates.int8.max_map_drop == 1.5
    with pytest.raises(ExportConfigError, match="precision must be one of"):
        load_export_config(["precision=int4"])
    with pytest.raises(ExportConfigError, match=r"int8\.calibration_method must be one of"):
        load_export_config(["int8.calibration_method=mse"])
    with pytest.raises(ExportConfigError, match=r"separate engines; choose one"):
        load_export_config(["precision=int8", "tensorrt.int8=true"])
    with pytest.raises(ExportConfigError, match=r"for a TensorRT INT8 engine export precision=fp32"):
        load_export_config(["precision=int8", "tensorrt.mode=required"])
    with pytest.raises(ExportConfigError, match=r"min_speedup >= 0, found .*min_speedup=-1\.0"):
        load_export_config(["gates.int8.min_speedup=-1"])
