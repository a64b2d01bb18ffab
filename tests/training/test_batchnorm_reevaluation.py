"""Re-measuring finished runs with recomputed BatchNorm statistics: the exported result is reproduced first,
the file is an ablation results file paired by seed, nothing in the run dirs changes, and it resumes."""

import json
import shutil

import pytest

from tiny_training import tiny_overrides
from training.batchnorm_reevaluation import main


def _train(overrides):
    from training.config import load_config
    from training.distributed import init_distributed
    from training.trainer import Trainer

    Trainer(load_config("demo-teacher", overrides), init_distributed("cpu")).fit()  # as tests/conftest.py does


@pytest.fixture(scope="module")
def ablation_runs(tiny_reid_root, tmp_path_factory):
    """A tiny teacher and CDD student (with the mixed copy, as the demo student), laid out as `make ablation`
    leaves them: RUNS/tiny/seed0/{teacher,cdd}."""
    root = tmp_path_factory.mktemp("ablation") / "runs"
    seed = root / "tiny" / "seed0"
    _train(tiny_overrides(tiny_reid_root, seed / "teacher", epochs=2))
    _train(tiny_overrides(tiny_reid_root, seed / "cdd", "student", seed / "teacher", epochs=2)
           + ["loss.distill_mixup_alpha=0.4"])
    return root, seed


def _ablation_folder(tmp_path, runs):
    root, seed = runs
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    return copy, copy / seed.relative_to(root)


def test_reevaluation_reproduces_each_runs_result_then_recomputes_and_pairs_by_seed(tmp_path, ablation_runs,
                                                                                   capsys):
    root, seed = _ablation_folder(tmp_path, ablation_runs)
    before = {p: p.read_bytes() for p in seed.rglob("*") if p.is_file()}
    out = tmp_path / "ablation-tiny-recomputed-bn.json"

    assert main(["--runs", str(root), "--dataset", "tiny", "--out", str(out)]) == 0

    result = json.loads(out.read_text())
    runs = result["runs"]["tiny"]
    for variant, run in (("teacher", seed / "teacher"), ("cdd", seed / "cdd")):
        recorded = json.loads((run / "metrics.json").read_text())["final"]
        (final,) = runs[variant]
        assert final["seed"] == 0 and final["exported_mAP"] == recorded["mAP"]
        assert final["exported_rank1"] == recorded["rank1"] and final["flops"] == recorded["flops"]
    student = runs["cdd"][0]
    assert student["mAP"] != student["exported_mAP"], "the tiny student's statistics were not recomputed"
    assert student["asymmetric"] != student["exported_asymmetric"]
    # what the trainer measured at the end of each run with its own recomputation is what this measures
    for variant in ("teacher", "cdd"):
        final = json.loads((seed / variant / "metrics.json").read_text())["final"]
        assert final["recomputed_stats"]["mAP"] == runs[variant][0]["mAP"], variant
    paired = result["summary"]["tiny"]["teacher"]["cdd_minus"]
    assert paired["diffs"] == [pytest.approx(student["mAP"] - runs["teacher"][0]["mAP"], abs=1e-3)]
    assert "commit" in result["stamp"] and "machine" in result["stamp"]
    assert {p: p.read_bytes() for p in seed.rglob("*") if p.is_file()} == before

    # a second call keeps what the file holds (resume): nothing is evaluated again
    capsys.readouterr()
    assert main(["--runs", str(root), "--dataset", "tiny", "--out", str(out)]) == 0
    assert capsys.readouterr().out == "" and json.loads(out.read_text())["runs"] == result["runs"]


def test_a_run_whose_weights_do_not_reproduce_its_result_is_refused_by_name(tmp_path, ablation_runs,
                                                                         capsys):
    root, seed = _ablation_folder(tmp_path, ablation_runs)
    metrics = json.loads((seed / "cdd" / "metrics.json").read_text())
    metrics["final"]["mAP"] += 1.0
    (seed / "cdd" / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "out.json"
    assert main(["--runs", str(root), "--dataset", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{seed / 'cdd'}: the final weights measure mAP" in err and f"recorded {metrics['final']['mAP']}" in err


def test_no_finished_run_is_a_clear_error(tmp_path, capsys):
    assert main(["--runs", str(tmp_path), "--dataset", "tiny", "--out", str(tmp_path / "o.json")]) == 2
    assert f"no finished run under {tmp_path / 'tiny'}/seed<N>/<variant>" in capsys.readouterr().err
