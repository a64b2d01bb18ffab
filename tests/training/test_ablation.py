"""Ablation bookkeeping: the prune-then-distill variant's wiring and the plain verdict sentences."""

from pathlib import Path

from training.ablation import _variant_overrides, format_markdown, summarise


def test_prune_then_distill_is_the_cdd_arch_initialised_from_the_teacher():
    preset, overrides = _variant_overrides("prune-distill", Path("r"))
    assert preset == "demo-student"
    assert f'cdd.static_arch="{Path("r") / "cdd" / "arch.json"}"' in overrides
    assert 'model.init="teacher"' in overrides
    _, static = _variant_overrides("static", Path("r"))
    assert 'model.init="scratch"' in static


def _final(mAP, flops=100):
    return {"mAP": mAP, "rank1": mAP + 10, "params": 10, "flops": flops, "flops_reduction": 80.0}


def test_markdown_says_whether_cdd_beats_the_baselines():
    results = {"synthetic": {"cdd": [_final(50), _final(51), _final(52)],
                             "static": [_final(40), _final(41), _final(42)],
                             "prune-distill": [_final(50.5), _final(51.5), _final(49.5)]}}
    text = format_markdown(summarise(results))
    assert "CDD beats (c) static student, same arch, scratch: +10.00 mAP points" in text
    assert "CDD ties with (e) prune-then-distill, same arch: +0.50 mAP points" in text
    results["synthetic"]["prune-distill"] = [_final(60), _final(60.5), _final(61)]
    assert "CDD loses to (e)" in format_markdown(summarise(results))


def test_a_single_seed_gives_no_verdict():
    results = {"synthetic": {"cdd": [_final(50)], "static": [_final(40)]}}
    text = format_markdown(summarise(results))
    assert "CDD vs (c) static student, same arch, scratch: +10.00 mAP points on a single seed" in text
    assert "beats" not in text
