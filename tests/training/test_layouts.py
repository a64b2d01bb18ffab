"""Dataset listers on tiny fake trees in each distributed layout (real JPEG/PNG files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from training.data.layouts import dataset_names, load_dataset
from training.data.records import DatasetSplits, Record, train_labels


def _image(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), colour).save(path)


def _tree(root: Path, files: dict[str, list[str]]) -> Path:
    for folder, names in files.items():
        for name in names:
            _image(root / folder / name)
    return root


def _ids(records: tuple[Record, ...]) -> list[tuple[int, int]]:
    return sorted((r.pid, r.camid) for r in records)


def test_market1501_drops_junk_and_keeps_distractors_in_gallery_only(tmp_path: Path) -> None:
    root = _tree(tmp_path / "Market-1501-v15.09.15", {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c6s3_012345_02.jpg",
                               "-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg"],
        "query": ["0002_c3s1_000451_01.jpg", "0000_c2s1_000151_01.jpg", "-1_c2s1_000401_01.jpg"],
        "bounding_box_test": ["0002_c4s2_000451_01.jpg", "0000_c3s1_000151_01.jpg", "-1_c1s1_000401_01.jpg"],
    })
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    splits = load_dataset("market1501", root)
    assert isinstance(splits, DatasetSplits) and splits.protocol == "reid" and splits.name == "market1501"
    assert _ids(splits.train) == [(2, 0), (2, 1), (7, 5)]
    assert _ids(splits.query) == [(2, 2)]
    assert _ids(splits.gallery) == [(0, 2), (2, 3)]
    assert splits.num_train_ids == 2
    assert Path(splits.query[0].path) == root / "query" / "0002_c3s1_000451_01.jpg"


def test_dukemtmc_and_veri776_parse_cameras(tmp_path: Path) -> None:
    duke = _tree(tmp_path / "duke", {
        "bounding_box_train": ["0001_c2_f0046182.jpg", "0005_c8_f0000001.jpg"],
        "query": ["0005_c1_f0001234.jpg"], "bounding_box_test": ["0005_c3_f0001300.jpg"],
    })
    splits = load_dataset("dukemtmc", duke)
    assert _ids(splits.train) == [(1, 1), (5, 7)] and _ids(splits.query) == [(5, 0)]
    veri = _tree(tmp_path / "VeRi", {
        "image_train": ["0001_c001_00016450_0.jpg", "0001_c012_00016460_0.jpg"],
        "image_query": ["0002_c002_00030600_1.jpg"], "image_test": ["0002_c003_00084280_0.jpg"],
    })
    splits = load_dataset("veri776", veri)
    assert _ids(splits.train) == [(1, 0), (1, 11)]
    assert _ids(splits.query) == [(2, 1)] and _ids(splits.gallery) == [(2, 2)]


def _msmt17(root: Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    lists = {
        "list_train.txt": (train_dir, ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                                       "0001/0001_002_07_0303noon_0100_1.jpg 1"]),
        "list_val.txt": (train_dir, ["0001/0001_005_15_0303noon_0200_0.jpg 1"]),
        "list_query.txt": (test_dir, ["0000/0000_000_03_0303morning_0015_0.jpg 0"]),
        "list_gallery.txt": (test_dir, ["0000/0000_001_04_0303afternoon_0016_0.jpg 0", "",
                                        "0003/0003_000_12_0304morning_0001_2.jpg 3"]),
    }
    for list_name, (folder, lines) in lists.items():
        (root / list_name).parent.mkdir(parents=True, exist_ok=True)
        (root / list_name).write_text("\n".join(lines) + "\n")
        for line in filter(None, lines):
            _image(root / folder / line.split()[0])
    return root


def test_msmt17_reads_lists_cameras_and_optional_val(tmp_path: Path) -> None:
    root = _msmt17(tmp_path / "MSMT17_V1")
    splits = load_dataset("msmt17", root)
    assert _ids(splits.train) == [(0, 0), (1, 6), (1, 14)]  # pid 0 is a real identity in MSMT17
    assert _ids(splits.query) == [(0, 2)]
    assert _ids(splits.gallery) == [(0, 3), (3, 11)]
    assert all(Path(r.path).is_file() for r in splits.train + splits.query + splits.gallery)
    assert _ids(load_dataset("msmt17", root, include_val=False).train) == [(0, 0), (1, 6)]
    v2 = _msmt17(tmp_path / "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    assert Path(load_dataset("msmt17", v2).query[0].path).parent.parent.name == "mask_test_v2"


def test_msmt17_malformed_list_line_names_file_and_line(tmp_path: Path) -> None:
    root = _msmt17(tmp_path / "msmt")
    (root / "list_query.txt").write_text("0000/0000_000_03_0303morning_0015_0.jpg\n")
    with pytest.raises(ValueError, match=r"list_query\.txt:1: expected '<image> <integer id>'"):
        load_dataset("msmt17", root)


def _vehicleid(root: Path, per_id: int = 4) -> Path:
    split = root / "train_test_split"
    split.mkdir(parents=True)
    (split / "train_list.txt").write_text("0001 10\n0002 10\n0003 11\n")
    test_lines = [f"{vid}{i:03d} {vid}" for vid in (20, 21, 22) for i in range(per_id)]
    (split / "test_list_800.txt").write_text("\n".join(test_lines) + "\n")
    for line in ["0001 10", "0002 10", "0003 11", *test_lines]:
        _image(root / "image" / f"{line.split()[0]}.jpg")
    return root


def test_vehicleid_one_seeded_gallery_image_per_identity(tmp_path: Path) -> None:
    root = _vehicleid(tmp_path / "VehicleID_V1.0")
    splits = load_dataset("vehicleid", root, test_size=800, seed=3)
    assert _ids(splits.train) == [(10, -1), (10, -1), (11, -1)]
    assert sorted(r.pid for r in splits.gallery) == [20, 21, 22]
    assert {r.camid for r in splits.gallery} == {1} and {r.camid for r in splits.query} == {0}
    assert len(splits.query) == 9 and not {r.path for r in splits.query} & {r.path for r in splits.gallery}
    assert all(Path(r.path).is_file() for r in splits.query)
    assert load_dataset("vehicleid", root, seed=3).gallery == splits.gallery
    picks = {load_dataset("vehicleid", root, seed=s).gallery for s in range(8)}
    assert len(picks) > 1, "the gallery pick must depend on the seed"
    with pytest.raises(ValueError, match="test_size must be one of"):
        load_dataset("vehicleid", root, test_size=500)
    with pytest.raises(FileNotFoundError, match="test_list_1600.txt"):
        load_dataset("vehicleid", root, test_size=1600)


def test_folder_with_train_and_test_subfolders(tmp_path: Path) -> None:
    root = _tree(tmp_path / "products", {
        "train/mug": ["a.jpg", "b.png"], "train/cup": ["c.JPG"], "test/spoon": ["d.jpg", "e.jpg"],
        "test/fork": ["f.png"],
    })
    (root / "test" / "fork" / "notes.txt").write_text("ignored")
    splits = load_dataset("folder", root)
    assert splits.protocol == "class" and splits.query == splits.gallery
    pid = {name: i for i, name in enumerate(["cup", "fork", "mug", "spoon"])}
    assert sorted(r.pid for r in splits.train) == sorted([pid["mug"], pid["mug"], pid["cup"]])
    assert sorted(r.pid for r in splits.query) == [pid["fork"], pid["spoon"], pid["spoon"]]
    assert {r.camid for r in splits.train + splits.query} == {-1}


def test_flat_folder_is_split_cub_style(tmp_path: Path) -> None:
    root = _tree(tmp_path / "cub", {f"{i:03d}.class_{i}": ["x.jpg", "y.jpg"] for i in range(1, 6)})
    splits = load_dataset("folder", root)
    assert sorted({Path(r.path).parent.name for r in splits.train}) == ["001.class_1", "002.class_2"]
    assert sorted({Path(r.path).parent.name for r in splits.query}) == ["003.class_3", "004.class_4", "005.class_5"]
    assert splits.num_train_ids == 2 and len(splits.gallery) == 6
    _tree(tmp_path / "one", {"only": ["x.jpg"]})
    with pytest.raises(ValueError, match="1 class folder"):
        load_dataset("folder", tmp_path / "one")


def test_errors_name_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid names: market1501, dukemtmc, msmt17, veri776, vehicleid, folder"):
        load_dataset("cuhk03", tmp_path)
    assert set(dataset_names()) == {"market1501", "dukemtmc", "msmt17", "veri776", "vehicleid", "folder"}
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_dataset("market1501", tmp_path / "does-not-exist")
    root = _tree(tmp_path / "market", {"bounding_box_train": ["0002_c1s1_000451_03.jpg"]})
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("market1501", root)
    assert str(root / "query") in str(error.value) and "bounding_box_test/" in str(error.value)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['seed'\]; valid options: none"):
        load_dataset("market1501", root, seed=1)
    _tree(root, {"query": ["IMG_0001.jpg"], "bounding_box_test": []})
    (root / "bounding_box_test").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="IMG_0001.jpg: file name does not start with '<pid>_c<camera>'"):
        load_dataset("market1501", root)


def test_train_labels_are_contiguous_in_sorted_pid_order() -> None:
    records = [Record("a", 42, 0), Record("b", 7, 1), Record("c", 42, 2), Record("d", 1500, 0)]
    labels, mapping = train_labels(records)
    assert mapping == {7: 0, 42: 1, 1500: 2}
    assert labels == [1, 0, 1, 2]
    with pytest.raises(ValueError, match="protocol must be one of"):
        DatasetSplits("x", (), (), (), "retrieval")


def test_records_and_layouts_import_without_numpy_or_torch() -> None:
    code = ("import sys, training.data.records, training.data.layouts; "
            "bad = {'numpy', 'torch', 'PIL'} & set(sys.modules); assert not bad, bad")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
