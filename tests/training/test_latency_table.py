"""The per-block latency table: grid, interpolation, a real ONNX Runtime measurement, JSON round trip, and the
config / budget settings that are refused."""

import json

import onnxruntime as ort
import pytest
import torch

from training.arch_spec import ArchSpec
from training.config import CDDConfig, ConfigError, load_config
from training.latency_budget import LatencyBudget
from training.latency_measure import kept_grid, latency_key, measure_latency_table
from training.latency_table import BlockLatency, LatencyTable, LatencyTableError

TINY = ArchSpec(depth=18, width=0.125, embedding_dim=32, input_size=(64, 32), indicators=True)


@pytest.fixture(scope="module")
def measured():
    """A table of the tiny test network (inner widths 8..64), measured for real: (table, cdd)."""
    cdd = CDDConfig(round_to=4, latency_batch=8, latency_threads=1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    table = measure_latency_table(TINY, cdd)
    assert torch.equal(torch.get_rng_state(), before), "measuring changed the global random state of training"
    return table, cdd


def test_grid_holds_the_smallest_exported_width_the_full_width_and_multiples_of_round_to():
    assert kept_grid(64, 8) == [8, 16, 32, 40, 56, 64]
    assert kept_grid(8, 8) == [8]
    assert kept_grid(6, 8) == [6]  # a block narrower than round_to keeps its full width
    assert kept_grid(16, 1, points=4) == [1, 6, 11, 16]
    assert all(k % 4 == 0 for k in kept_grid(100, 4)[:-1]) and kept_grid(100, 4)[-1] == 100


def test_interpolation_is_linear_between_measured_widths_and_clamped_outside():
    block = BlockLatency("layer1.0", 16, (4, 8, 16), (1.0, 2.0, 4.0), (1.0, 2.0, 4.0))
    assert block.at(4) == 1.0 and block.at(6) == pytest.approx(1.5) and block.at(12) == pytest.approx(3.0)
    assert block.at(1) == 1.0 and block.at(16) == 4.0
    assert block.max_slope() == pytest.approx(0.25)
    table = LatencyTable({}, {"stem": 0.5, "head": 0.25}, (block, block))
    assert table.estimate_ms([16, 6]) == pytest.approx(0.75 + 4.0 + 1.5)
    assert table.floor_ms() == pytest.approx(2.75) and table.full_ms() == pytest.approx(8.75)
    assert table.rounding_step_ms(4) == pytest.approx(1.0)


def test_measured_table_is_usable_and_records_where_it_was_measured(measured):
    table, cdd = measured
    assert [b.width for b in table.blocks] == [p for _, p in TINY.blocks()]
    assert all(b.widths == tuple(kept_grid(b.width, 4)) for b in table.blocks)
    for b in table.blocks:
        assert list(b.ms) == sorted(b.ms) and b.ms[0] == b.raw_ms[0] > 0
    assert table.full_ms() > table.floor_ms() > table.fixed_total_ms > 0
    assert table.key == latency_key(TINY, cdd) and table.key["threads"] == 1 and table.key["batch"] == 8
    assert table.runtime_version == ort.__version__
    assert table.machine["cpu"] and table.whole_network["measured_ms"] > 0
    assert table.whole_network["estimated_ms"] == pytest.approx(table.full_ms())


def test_table_round_trips_through_json_and_refuses_a_foreign_run(measured, tmp_path):
    table, cdd = measured
    path = table.save(tmp_path / "latency_table.json")
    loaded = LatencyTable.load(path)
    assert loaded == table
    assert loaded.estimate_ms([3, 5, 7, 9, 11, 13, 17, 19]) == table.estimate_ms([3, 5, 7, 9, 11, 13, 17, 19])
    with pytest.raises(LatencyTableError, match=r"measured for batch = 8, this run has 16"):
        loaded.check_key(latency_key(TINY, CDDConfig(round_to=4, latency_batch=16)), str(path))
    data = json.loads(path.read_text())
    data["blocks"][0]["widths"] = [8, 4]
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="block layer1.0 needs increasing widths"):
        LatencyTable.load(path)


def test_latency_budget_below_the_networks_floor_is_refused_naming_the_measured_value(measured):
    table, _ = measured
    floor = table.floor_ms()
    with pytest.raises(ValueError, match=rf"below the lowest latency .*: {floor:.3f} ms .*raise the budget"):
        LatencyBudget.for_table(table, floor * 0.5, round_to=4)
    with pytest.raises(ValueError, match="fixed part"):
        LatencyBudget.for_table(table, table.fixed_total_ms * 0.9, round_to=4)
    assert LatencyBudget.for_table(table, floor, round_to=4).met_resets([p for _, p in TINY.blocks()])


def test_bad_latency_settings_are_config_errors():
    with pytest.raises(ConfigError, match="cdd.latency_budget_ms must be >= 0"):
        load_config("demo-student", ["cdd.latency_budget_ms=-1"])
    with pytest.raises(ConfigError, match=r"cdd.latency_runtime must be one of \('onnxruntime-cpu',\), found 'trt'"):
        load_config("demo-student", ['cdd.latency_runtime="trt"'])
    with pytest.raises(ConfigError, match="cdd.latency_batch and cdd.latency_threads must be >= 1, found 0 and 1"):
        load_config("demo-student", ["cdd.latency_batch=0"])
    demo = load_config("demo-student")
    assert demo.cdd.latency_budget_ms == 0.0 and demo.cdd.flops_budget == 0.20  # opt-in; demo unchanged
