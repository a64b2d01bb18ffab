"""cdd-index end to end on the tiny bundle and synthetic images (in-process `main`, one subprocess run)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.backends import create_engine
from serving.bundle import write_manifest
from serving.index import GalleryIndex
from serving.index.__main__ import main
from serving.index.build import items_from_folder, items_from_list
from serving.preprocess import load_image_file


def _run(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture(scope="module")
def built(tiny_bundle, gallery_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "index"
    assert (
        main(["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out", str(out)]) == 0
    )
    return out


def _copy_index(built: Path, tmp_path: Path) -> Path:
    target = tmp_path / "index"
    shutil.copytree(built, target)
    return target


def test_build_indexes_every_image_with_its_metadata(built, gallery_images, tiny_manifest, synthetic):
    index = GalleryIndex.load(built)
    files = sorted(p.name for p in gallery_images.glob("*.jpg"))
    assert len(index) == len(files) == synthetic.gallery_ids * synthetic.gallery_per_id
    ids, _, metadata = index.snapshot()
    assert sorted(ids) == files and sorted(m["file"] for m in metadata) == files
    meta = index.get("0003_c2s1_000002_00.jpg")[1]
    assert meta == {
        "path": "0003_c2s1_000002_00.jpg",
        "file": "0003_c2s1_000002_00.jpg",
        "label": 3,
        "camera": 1,
    }
    assert GalleryIndex.read_info(built)["bundle_sha256"] == tiny_manifest.sha256()


def test_searching_with_a_gallery_image_returns_itself_then_its_identity(
    built, tiny_bundle, tiny_manifest, gallery_images, synthetic
):
    index = GalleryIndex.load(built, expected_bundle_sha256=tiny_manifest.sha256())
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    paths = sorted(gallery_images.glob("*.jpg"))
    queries = engine.embed(np.stack([load_image_file(p, tiny_manifest) for p in paths]))
    for path, hits in zip(paths, index.search(queries, k=synthetic.gallery_per_id), strict=True):
        assert hits[0].id == path.name and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert {h.metadata["label"] for h in hits} == {int(path.name[:4])}


def test_info_and_recall(built, capsys):
    code, out, _ = _run(capsys, "info", "--index", built, "--recall", "--k", 3)
    assert code == 0 and out["count"] == 20 and out["index_type"] == "flat" and out["dim"] == 16
    assert out["recall"]["recall_at_k_vs_exact"] == 1.0 and out["recall"]["queries"] == 20


def test_verify_re_embeds_a_sample(built, tiny_bundle, gallery_images, capsys):
    code, out, _ = _run(
        capsys, "verify", "--index", built, "--bundle", tiny_bundle, "--images", gallery_images
    )
    assert code == 0 and out["checksums"] == "ok" and out["bundle"] == "match"
    assert out["re_embedded"] == 8 and out["min_cosine"] > 0.9999


def test_verify_catches_changed_images(built, tiny_bundle, gallery_images, tmp_path, capsys, synthetic):
    changed = tmp_path / "images"
    shutil.copytree(gallery_images, changed)
    for path in changed.glob("*.jpg"):
        Image.fromarray(synthetic.image(77, 0)).save(path)
    code, _, err = _run(
        capsys, "verify", "--index", built, "--bundle", tiny_bundle, "--images", changed, "--sample", 20
    )
    assert code == 2 and "the images or the engine changed" in err


def test_remove_and_add(built, tiny_bundle, tmp_path, capsys, synthetic):
    index_dir = _copy_index(built, tmp_path)
    code, out, _ = _run(
        capsys, "remove", "--index", index_dir, "--ids", "0001_c1s1_000001_00.jpg", "0002_c1s1_000001_00.jpg"
    )
    assert code == 0 and out["removed"] == 2 and out["count"] == 18
    code, _, err = _run(capsys, "remove", "--index", index_dir, "--ids", "ghost.jpg")
    assert code == 2 and "ghost.jpg" in err and "nothing was removed" in err
    extra = tmp_path / "extra"
    extra.mkdir()
    Image.fromarray(synthetic.image(9, 0)).save(extra / "0009_c1s1_000001_00.jpg")
    code, out, _ = _run(
        capsys,
        "add",
        "--index",
        index_dir,
        "--bundle",
        tiny_bundle,
        "--images",
        extra,
        "--id-prefix",
        "extra/",
        "--quiet",
    )
    assert code == 0 and out["count"] == 19 and out["ingest"]["images"] == 1
    assert GalleryIndex.load(index_dir).get("extra/0009_c1s1_000001_00.jpg")[1]["label"] == 9
    code, _, err = _run(
        capsys,
        "add",
        "--index",
        index_dir,
        "--bundle",
        tiny_bundle,
        "--images",
        extra,
        "--id-prefix",
        "extra/",
        "--quiet",
    )
    assert code == 2 and "already in the index" in err


def test_add_with_another_bundle_is_refused(
    built, tiny_bundle, tiny_manifest, gallery_images, tmp_path, capsys
):
    other = tmp_path / "other_bundle"
    shutil.copytree(tiny_bundle, other)
    write_manifest(other, dataclasses.replace(tiny_manifest, name="other"))
    code, _, err = _run(
        capsys,
        "add",
        "--index",
        _copy_index(built, tmp_path),
        "--bundle",
        other,
        "--images",
        gallery_images,
        "--quiet",
    )
    assert code == 2 and tiny_manifest.sha256() in err and "cdd-index build" in err


def test_unreadable_images_are_skipped_or_fatal_with_strict(
    tiny_bundle, gallery_images, tmp_path, capsys, caplog
):
    images = tmp_path / "images"
    shutil.copytree(gallery_images, images)
    (images / "0042_c1s1_000001_00.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    code, out, err = _run(
        capsys, "build", "--bundle", tiny_bundle, "--images", images, "--out", tmp_path / "a", "--quiet"
    )
    assert code == 0 and out["count"] == 20 and out["ingest"]["skipped"] == 1
    skipped = out["ingest"]["skipped_files"][0]
    assert (
        skipped["path"].endswith("0042_c1s1_000001_00.jpg") and "not a recognised image" in skipped["reason"]
    )
    assert "skipped 1 unreadable image" in caplog.text and "0042_c1s1_000001_00.jpg" in caplog.text
    code, _, err = _run(
        capsys,
        "build",
        "--bundle",
        tiny_bundle,
        "--images",
        images,
        "--out",
        tmp_path / "b",
        "--quiet",
        "--strict",
    )
    assert code == 2 and "0042_c1s1_000001_00.jpg" in err and not (tmp_path / "b").exists()


def test_list_file_items(gallery_images, tmp_path):
    names = sorted(p.name for p in gallery_images.glob("*.jpg"))[:3]
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"# comment\n{gallery_images / names[0]}\tcat\t3\n\n{gallery_images / names[1]}\t7\n"
        f"{gallery_images / names[2]}\n"
    )
    items = items_from_list(listing)
    assert [i.metadata.get("label") for i in items] == ["cat", 7, None]
    assert items[0].metadata["camera"] == 3 and items[0].metadata["file"] == names[0]
    listing.write_text(f"{names[0]}\n{names[0]}\n")
    with pytest.raises(ValueError, match="listed again"):
        items_from_list(listing)


def test_class_folders_label_items_by_folder(tmp_path, synthetic):
    for label in ("cats", "dogs"):
        (tmp_path / label).mkdir()
        Image.fromarray(synthetic.image(1, 0)).save(tmp_path / label / "a.png")
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(synthetic.image(1, 0)).save(tmp_path / ".hidden" / "b.png")
    items = items_from_folder(tmp_path)
    assert [(i.id, i.metadata["label"]) for i in items] == [("cats/a.png", "cats"), ("dogs/a.png", "dogs")]


def test_layout_build_then_eval_gives_the_known_answer(tiny_bundle, market_root, tmp_path, capsys, synthetic):
    index_dir = tmp_path / "market"
    code, out, _ = _run(
        capsys,
        "build",
        "--bundle",
        tiny_bundle,
        "--layout",
        "market1501",
        "--root",
        market_root,
        "--split",
        "gallery",
        "--out",
        index_dir,
        "--index-type",
        "hnsw",
        "--quiet",
    )
    assert code == 0 and out["count"] == synthetic.market_ids * synthetic.market_gallery_per_id + 1
    code, out, _ = _run(
        capsys,
        "eval",
        "--index",
        index_dir,
        "--bundle",
        tiny_bundle,
        "--layout",
        "market1501",
        "--root",
        market_root,
        "--quiet",
    )
    assert code == 0 and out["num_valid_queries"] == synthetic.market_ids
    assert out["mAP"] == pytest.approx(100.0) and out["rank1"] == pytest.approx(100.0)  # percent


def test_errors_exit_with_2(tiny_bundle, tmp_path, capsys):
    code, _, err = _run(
        capsys, "build", "--bundle", tiny_bundle, "--images", tmp_path / "nope", "--out", tmp_path / "o"
    )
    assert code == 2 and "not a folder" in err
    code, _, err = _run(capsys, "info", "--index", tmp_path)
    assert code == 2 and "no gallery index here" in err


def test_module_entry_point(tiny_bundle, gallery_images, tmp_path, synthetic):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.index",
            "build",
            "--bundle",
            str(tiny_bundle),
            "--images",
            str(gallery_images),
            "--out",
            str(tmp_path / "idx"),
            "--backend",
            "onnxruntime-cpu",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["count"] == synthetic.gallery_ids * synthetic.gallery_per_id
