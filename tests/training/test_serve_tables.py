import pytest

from training.results.serve_tables import SERVERS, serve_rounds_table
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
