"""cdd-bench search-cost on the tiny bundle: it costs the steps the batch worker really runs, and its
summary follows from its rounds (no timing thresholds)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from cdd_common.search_cost_table import SEARCH_COST_STEPS, search_cost_markdown
from serving.benchmarks.__main__ import main
from serving.benchmarks.serve import query_jpegs, random_gallery
from serving.bundle import load_bundle
from serving.config import ServeConfig
from serving.preprocess import image_to_model_input
from serving.server import build_service


def test_batch_steps_are_what_a_search_runs(tiny_bundle: Path, tmp_path: Path) -> None:
    """decode -> embed -> search through `batch_steps` gives exactly the hits of a Search through the batcher."""
    manifest = load_bundle(tiny_bundle)
    index = random_gallery(manifest, 40, 0, tmp_path / "gallery")
    service = build_service(ServeConfig(bundle=tiny_bundle, index=index, backend="onnxruntime-cpu", engine_threads=1))
    try:
        steps = service.batch_steps()
        images = query_jpegs(manifest, 3, 5)
        queries = [service.search_query(image, 7) for image in images]
        pixels = np.stack([steps.decode(query) for query in queries])
        for row, image in zip(pixels, images, strict=True):
            np.testing.assert_array_equal(row, image_to_model_input(image, manifest))
        found = steps.search(steps.embed(pixels), queries)
        for image, item in zip(images, found, strict=True):
            assert [(h.id, h.score) for h in item.hits()] == [(h.id, h.score) for h in service.search(image, 7)]
    finally:
        service.close()


def test_search_cost_summary_follows_its_rounds(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["search-cost", "--bundle", str(tiny_bundle), "--batches", "1,3", "--rounds", "3", "--calls", "2",
                 "--gallery-size", "30", "--out", str(out), "--log-level", "WARNING"])
    assert code == 0
    result = json.loads((out / "search-cost.json").read_text())
    cost = result["search_cost"]
    assert cost["bundle"] == "tiny" and cost["config"]["batches"] == [1, 3]
    assert sorted(cost["batches"]) == ["1", "3"]
    for size in ("1", "3"):
        steps = cost["batches"][size]["steps"]
        assert sorted(steps) == sorted(SEARCH_COST_STEPS)
        for cell in steps.values():
            assert len(cell["rounds_us"]) == 3
            assert cell["median_us"] == statistics.median(cell["rounds_us"])
            assert (cell["min_us"], cell["max_us"]) == (min(cell["rounds_us"]), max(cell["rounds_us"]))
        assert cost["batches"][size]["total_median_us"] == pytest.approx(sum(c["median_us"] for c in steps.values()))
    markdown = (out / "search-cost.md").read_text()
    assert search_cost_markdown(cost) in markdown
    assert "python -m serving.benchmarks search-cost --bundle" in markdown and "--batches 1,3 --rounds 3" in markdown


def test_search_cost_refuses_a_batch_over_the_bundle_max(tiny_bundle: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    top = load_bundle(tiny_bundle).batch.max
    assert main(["search-cost", "--bundle", str(tiny_bundle), "--batches", f"1,{top + 1}",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--batches {top + 1} exceeds" in err and f"batch.max {top}" in err
    assert main(["search-cost", "--bundle", str(tiny_bundle), "--rounds", "0", "--out", str(tmp_path)]) == 2
    assert "--rounds" in capsys.readouterr().err


def test_search_cost_table_orders_batch_sizes_by_number() -> None:
    cell = {"median_us": 2.0, "min_us": 1.0, "max_us": 3.0, "rounds_us": [1.0, 2.0, 3.0]}
    cost = {"batches": {size: {"steps": dict.fromkeys(SEARCH_COST_STEPS, cell), "total_median_us": 8.0}
                        for size in ("16", "6", "1")}}
    header = search_cost_markdown(cost).splitlines()[0]
    assert header.index("batch 1:") < header.index("batch 6:") < header.index("batch 16:")
