"""`python -m training.ablation --folder NAME=PATH`: the ablation trained on a team's own class folders."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.ablation import DATASETS, FOLDER_PROTOCOL, folder_dataset, main
from training.arch_spec import ArchSpec

# A 2-epoch, 3-step network small enough for a test; its budget is one the tiny network can reach.
TINY = ["data.height=64", "data.width=32", "data.p=4", "data.k=2", "data.eval_batch_size=32", "model.width=0.125",
        "model.embedding_dim=32", "run.epochs=2", "run.max_steps_per_epoch=3", 'run.device="cpu"',
        "optim.flat_until=1", "optim.warmup_epochs=0.5", "cdd.grg_start_epoch=0.5", "cdd.memory_size=64",
        "cdd.ratio=0.7", "cdd.flops_budget=0.6", "cdd.round_to=4", "cdd.reset_decay_steps=2"]


def _class_folders(root: Path, seed: int) -> Path:
    """ROOT/train/<class>/ and ROOT/test/<class>/, 4 classes each, 6 images per class, one colour per class."""
    rng = np.random.default_rng(seed)
    for split, classes in (("train", ("a", "b", "c", "d")), ("test", ("e", "f", "g", "h"))):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            colour = rng.integers(0, 256, size=3)
            for i in range(6):
                pixels = np.clip(colour + rng.normal(0, 30, size=(64, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_own_folder_runs_every_asked_variant_on_that_folder_and_reports_it_under_its_name(tmp_path, capsys):
    root = _class_folders(tmp_path / "shop-images", seed=0)
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["--folder", f"shop={root}", "--seeds", "0", "--variants", "prune-distill", "--runs", str(runs),
            "--out", str(out)]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    written = json.loads((out / "ablation-shop.json").read_text())["runs"]
    assert list(written) == ["shop"]
    assert {v: [r["seed"] for r in rs] for v, rs in written["shop"].items()} == {
        "teacher": [0], "cdd": [0], "prune-distill": [0]}
    for variant in ("teacher", "cdd", "prune-distill"):
        config = json.loads((runs / "shop" / "seed0" / variant / "config.json").read_text())
        assert (config["data"]["dataset"], config["data"]["root"]) == ("folder", str(root))
        assert config["run"]["max_steps_per_epoch"] == 3 and config["cdd"]["grg_start_epoch"] == 0.5
    cdd = ArchSpec.load(runs / "shop" / "seed0" / "cdd" / "arch.json")
    static = ArchSpec.load(runs / "shop" / "seed0" / "prune-distill" / "arch.json")
    assert static.kept_counts() == cdd.kept_counts() and static.kept_counts() != [p for _, p in cdd.blocks()]

    # the same name on other images: the finished runs are refused, not reused as if they were that data's
    other = _class_folders(tmp_path / "other-images", seed=1)
    assert main([a.replace(str(root), str(other)) for a in argv]) == 2
    assert re.search(r"teacher/config\.json: .*data\.root: the run has .*shop-images.*, asked for .*other-images",
                     capsys.readouterr().err)


def test_folder_settings_are_animal_mnists_protocol_with_the_folder_as_root(tmp_path):
    (tmp_path / "bikes").mkdir()
    name, settings = folder_dataset(str(tmp_path / "bikes"))
    assert name == "bikes"
    assert settings == FOLDER_PROTOCOL + [f'data.root="{tmp_path / "bikes"}"']
    assert set(DATASETS["animal-mnist"]) - set(settings) == {
        'data.root="data/animal-mnist"', "data.height=32", "data.width=32"}
    assert folder_dataset(f"mine={tmp_path / 'bikes'}")[0] == "mine"
    with pytest.raises(ValueError, match="is not a folder"):
        folder_dataset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="built-in dataset's; name it: --folder my-synthetic="):
        folder_dataset(f"synthetic={tmp_path / 'bikes'}")
