"""serving/image_decoding.py and training/data/image_decoding.py are one decoding rule in two copies
(serving may not import training): the files must stay identical, and the rule name the manifest records
must be the one they implement."""

from __future__ import annotations

from pathlib import Path

from serving import image_decoding as serving_copy
from serving.bundle import DECODE_RULE, Preprocess
from training.data import image_decoding as training_copy

ROOT = Path(__file__).resolve().parents[1]


def test_the_two_copies_are_identical() -> None:
    serving_text = (ROOT / "serving" / "image_decoding.py").read_text()
    training_text = (ROOT / "training" / "data" / "image_decoding.py").read_text()
    assert serving_text == training_text, "edit one copy, then copy it over the other"


def test_the_manifest_records_the_rule_both_copies_implement() -> None:
    assert serving_copy.DECODE_RULE == training_copy.DECODE_RULE == DECODE_RULE == Preprocess().decode
    assert tuple(Preprocess().background) == serving_copy.DEFAULT_BACKGROUND == training_copy.DEFAULT_BACKGROUND
