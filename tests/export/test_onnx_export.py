"""The deploy wrapper, its ONNX export, and the ONNX FLOPs count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from tiny_runs import TinyRuns

from export.deploy_wrapper import DeployWrapper
from export.fold import fold_network
from export.gate_images import gate_images
from export.onnx_export import export_onnx, onnxruntime_embedder
from export.onnx_flops import FlopsMismatchError, check_flops, count_onnx_macs
from export.parity import compare, take_batch
from export.rebuild import build_slim
from export.run_dir import RunDir, load_run_dir
from training.cost import deployed_cost
from training.data.transforms import normalize_uint8


@pytest.fixture(scope="module")
def student18(tiny_run_dir: TinyRuns) -> tuple[RunDir, DeployWrapper]:
    run = load_run_dir(tiny_run_dir.student18)
    return run, DeployWrapper(fold_network(build_slim(run)), run.mean, run.std).eval()


@pytest.fixture(scope="module")
def onnx_path(student18: tuple[RunDir, DeployWrapper], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, wrapper = student18
    return export_onnx(wrapper, tmp_path_factory.mktemp("onnx") / "model.onnx", run.spec.input_size, 17)


def _images(run: RunDir) -> np.ndarray:
    return gate_images(run.dataset, run.data_root, run.spec.input_size, count=9, seed=0)


def test_wrapper_normalises_inside_and_outputs_unit_rows(student18: tuple[RunDir, DeployWrapper]) -> None:
    run, wrapper = student18
    images = _images(run)
    with torch.no_grad():
        found = wrapper(torch.from_numpy(images)).numpy()
        raw = wrapper.net(normalize_uint8(images, run.mean, run.std)).numpy()
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(found, axis=1), 1.0, atol=1e-5)
    assert found.dtype == np.float32 and found.shape == (len(images), 16)


def test_full_size_normalisation_is_the_same_arithmetic(student18: tuple[RunDir, DeployWrapper]) -> None:
    """The int8 export's variant: one multiply-add with (1, 3, H, W) constants, same embeddings, same mode."""
    run, wrapper = student18
    images = torch.from_numpy(_images(run))
    full = wrapper.with_input_size(run.spec.input_size)
    assert tuple(full.scale.shape) == tuple(full.shift.shape) == (1, 3, *run.spec.input_size)
    assert full.training is wrapper.training is False and full.net is wrapper.net
    with torch.no_grad():
        np.testing.assert_allclose(full.normalise(images).numpy(), wrapper.normalise(images).numpy(), atol=2e-6)
        np.testing.assert_allclose(full(images).numpy(), wrapper(images).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(height, width\) > 0, found \(64, 0\)"):
        wrapper.with_input_size((64, 0))


def test_wrapper_rejects_bad_normalisation(student18: tuple[RunDir, DeployWrapper]) -> None:
    with pytest.raises(ValueError, match="std > 0"):
        DeployWrapper(student18[1].net, (0.5, 0.5, 0.5), (0.2, 0.0, 0.2))


def test_onnx_interface(onnx_path: Path) -> None:
    model = onnx.load(str(onnx_path))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "images" and inp.type.tensor_type.elem_type == TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 64, 32, 3]
    assert out.name == "embeddings" and out.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    # TensorRT takes a uint8 input only when it feeds a Cast directly.
    (first,) = [n for n in model.graph.node if "images" in n.input]
    assert first.op_type == "Cast"


@pytest.mark.parametrize("batch", [1, 7, 16])
def test_onnxruntime_matches_torch_on_real_images(student18: tuple[RunDir, DeployWrapper], onnx_path: Path,
                                                  batch: int) -> None:
    run, wrapper = student18
    images = take_batch(_images(run), batch)
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(images)).numpy()
    found = onnxruntime_embedder(onnx_path)(images)
    parity = compare(expected, found)
    assert found.shape == (batch, 16)
    assert parity.max_abs_err < 1e-5 and parity.min_cosine > 0.99999


def test_opset_18_is_pinned(student18: tuple[RunDir, DeployWrapper], tmp_path: Path) -> None:
    run, wrapper = student18
    model = onnx.load(str(export_onnx(wrapper, tmp_path / "m.onnx", run.spec.input_size, 18)))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]


def test_onnx_flops_equal_the_cost_convention(student18: tuple[RunDir, DeployWrapper], onnx_path: Path) -> None:
    run, _ = student18
    assert count_onnx_macs(onnx_path) == deployed_cost(run.spec).flops
    assert check_flops(onnx_path, deployed_cost(run.spec).flops) == deployed_cost(run.spec).flops
    with pytest.raises(FlopsMismatchError, match="multiply-accumulates per image"):
        check_flops(onnx_path, deployed_cost(run.spec).flops + 1)


def test_count_onnx_macs_known_answer() -> None:
    """Conv 3->4 3x3 pad 1 on 8x8: 4*8*8*27 = 6912; Gemm 256->10 (transB): 2560; MatMul 10->5: 50."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w", (4, 3, 3, 3)), ("g", (10, 256)), ("m", (10, 5)))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
        helper.make_node("MatMul", ["y", "m"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert count_onnx_macs(model) == 6912 + 2560 + 50
