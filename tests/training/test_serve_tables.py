import pytest

from training.results.serve_tables import SERVERS, serve_budget_table, serve_pairs_table, serve_rounds_table
from training.results.tables import ResultsError


def _round(qps, load=0.5):
    servers = {name: {"rows": {"16": {"qps": q, "server_cpu_ms_per_request": 1000 / q}}}
               for (name, _), q in zip(SERVERS, qps, strict=True)}
    return {"machine": {"load_average": [load, 0, 0]}, "serve": {"servers": servers}}


def test_each_round_gives_cdd_serve_over_the_bare_sync_server_of_the_same_round():
    table = serve_rounds_table([_round([4000, 3800, 1000, 2000]), _round([2000, 2100, 1000, 500], 3.0)],
                               ["r1.json", "r2.json"]).splitlines()
    assert table[2] == "| 1 | 0.50 | 4,000; 0.25 ms | 3,800; 0.26 ms | 1,000 (0.25); 1.00 ms | 2,000 (0.50); 0.50 ms |"
    assert table[3] == "| 2 | 3.00 | 2,000; 0.50 ms | 2,100; 0.48 ms | 1,000 (0.50); 1.00 ms | 500 (0.25); 2.00 ms |"


def test_a_round_without_a_server_at_those_callers_names_the_file_and_the_server():
    broken = _round([4000, 3800, 1000, 2000])
    del broken["serve"]["servers"]["bare (aio)"]["rows"]["16"]
    with pytest.raises(ResultsError, match=r"r1.json: no 16-caller row for \['bare \(aio\)'\]"):
        serve_rounds_table([broken], ["r1.json"])


def _budget_round(bare, aio, cdd):
    """Rows from (qps, server ms per request, generator ms per request[, mean batch]) of three servers."""
    def row(qps, server_ms, generator_ms, batch=0.0):
        return {"qps": qps, "server_cpu_ms_per_request": server_ms, "requests": 1000,
                "generator_cpu_s": generator_ms, "mean_batch": batch}  # 1000 requests: s == ms per request
    return {"serve": {"servers": {"bare (sync)": {"rows": {"16": row(*bare)}},
                                  "bare (aio)": {"rows": {"16": row(*aio)}},
                                  "demo batched": {"rows": {"16": row(*cdd)}}}}}


def test_budget_table_splits_cdd_serve_cpu_and_gives_the_bound_for_half_of_bare_sync():
    cost = {"batches": {"1": {"total_median_us": 400.0}, "6": {"total_median_us": 300.0},
                        "16": {"total_median_us": 250.0}}}
    rounds = [_budget_round((3000, 0.30, 0.20), (3100, 0.28, 0.2), (1500, 0.80, 0.25, 5.2)),
              _budget_round((2000, 0.40, 0.25), (2100, 0.35, 0.2), (1000, 1.00, 0.30, 12.0))]
    table = serve_budget_table(rounds, ["r1.json", "r2.json"], cost).splitlines()
    # round 1: allowed = 2 x (0.30 + 0.20) - 0.25 = 0.75; rest = 0.80 - 0.28 - 0.30 (batch 6 nearest 5.2) = 0.22
    assert table[2] == ("| 1 | 0.30 + 0.20 | 0.80 + 0.25 | 0.50 | 0.75 | 0.28 | 0.30 (batch 6; mean 5.2) "
                        "| 0.22 |")
    # round 2: allowed = 2 x 0.65 - 0.30 = 1.00; batch 16 is nearest to 12.0; rest = 1.00 - 0.35 - 0.25 = 0.40
    assert table[3] == ("| 2 | 0.40 + 0.25 | 1.00 + 0.30 | 0.50 | 1.00 | 0.35 | 0.25 (batch 16; mean 12.0) "
                        "| 0.40 |")


def test_budget_table_names_a_round_without_generator_cpu():
    broken = _budget_round((3000, 0.30, 0.20), (3100, 0.28, 0.2), (1500, 0.80, 0.25, 5.2))
    del broken["serve"]["servers"]["demo batched"]["rows"]["16"]["generator_cpu_s"]
    with pytest.raises(ResultsError, match=r"r1.json: no 16-caller row with generator CPU for \['demo batched'\]"):
        serve_budget_table([broken], ["r1.json"], {"batches": {"6": {"total_median_us": 1.0}}})


def _pair_side(qps, cpu, p99, bare_qps):
    return {"serve": {"servers": {
        "demo batched": {"rows": {"16": {"qps": qps, "server_cpu_ms_per_request": cpu, "latency": {"p99_ms": p99}}}},
        "bare (sync)": {"rows": {"16": {"qps": bare_qps}}}}}}


def test_pairs_table_gives_each_side_over_its_own_bare_server_and_the_difference():
    first = [_pair_side(1800, 0.75, 16.0, 3000), _pair_side(1700, 0.80, 17.5, 3400)]
    second = [_pair_side(1500, 0.90, 19.0, 2500), _pair_side(1600, 0.85, 18.0, 3200)]
    table = serve_pairs_table(first, second, ["a1", "a2", "b1", "b2"], ("auto", "off")).splitlines()
    assert table[0] == ("| pair | auto: QPS (of bare sync); CPU/request; p99 | off: QPS (of bare sync); CPU/request; "
                        "p99 | auto minus off: QPS; CPU/request; p99 |")
    assert table[2] == ("| 1 | 1,800 (0.60); 0.75 ms; 16.0 ms | 1,500 (0.60); 0.90 ms; 19.0 ms "
                        "| +300; -0.15 ms; -3.0 ms |")
    assert table[3] == ("| 2 | 1,700 (0.50); 0.80 ms; 17.5 ms | 1,600 (0.50); 0.85 ms; 18.0 ms "
                        "| +100; -0.05 ms; -0.5 ms |")
    del second[1]["serve"]["servers"]["demo batched"]["rows"]["16"]["latency"]
    with pytest.raises(ResultsError, match=r"b2: no 16-caller row with latency for 'demo batched'"):
        serve_pairs_table(first, second, ["a1", "a2", "b1", "b2"], ("auto", "off"))
