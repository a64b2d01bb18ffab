"""cdd-index and cdd-bench flags: one name per idea, shared with cdd-serve and cdd-train (``--index-device``,
``--decode-threads``, ``--engine-threads``, ``--set section.key=value``); the old spellings still work, each use
printing one line that names the new one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.benchmarks.__main__ import _parser as bench_parser
from serving.benchmarks.__main__ import _resolved_command
from serving.index.__main__ import _parser as index_parser
from serving.index.__main__ import main as index_main
from serving.index.gallery import OPTION_KEYS, GalleryIndex
from serving.index.tuning_settings import TuningOptions, tuning_options

_BUILD = ["build", "--bundle", "B", "--images", "I", "--out", "O"]


def _notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if "deprecated" in line]


def test_old_index_spellings_store_what_the_new_ones_do_and_name_them(capsys: pytest.CaptureFixture) -> None:
    new = index_parser().parse_args([*_BUILD, "--decode-threads", "3", "--index-device", "auto",
                                     "--set", "index.nlist=8", "--set", "index.nprobe=2"])
    assert _notices(capsys.readouterr().err) == []
    old = index_parser().parse_args([*_BUILD, "--workers", "3", "--device", "auto", "--option", "nlist=8",
                                     "--option", "nprobe=2"])
    assert _notices(capsys.readouterr().err) == [
        "cdd-index build: --workers is deprecated; use --decode-threads 3",
        "cdd-index build: --device is deprecated; use --index-device auto",
        "cdd-index build: --option is deprecated; use --set index.nlist=8",
        "cdd-index build: --option is deprecated; use --set index.nprobe=2",
    ]
    assert vars(old) == vars(new)
    assert (new.decode_threads, new.index_device, tuning_options(new.tuning)) == (3, "auto", {"nlist": 8, "nprobe": 2})


def test_old_spellings_keep_their_checks(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        index_parser().parse_args([*_BUILD, "--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        index_parser().parse_args(["add", "--index", "X", "--bundle", "B", "--images", "I", "--workers", "two"])
    assert "invalid int value: 'two'" in capsys.readouterr().err


def test_the_set_keys_are_the_integer_tuning_options() -> None:
    assert set(TuningOptions.__dataclass_fields__) == OPTION_KEYS - {"factory"}
    with pytest.raises(ValueError, match=r"--set index.nlsit: unknown key; valid keys are index.ef_construction, "):
        tuning_options(["index.nlsit=8"])
    with pytest.raises(ValueError, match=r"--set index.nlist=eight: expected an integer"):
        tuning_options(["index.nlist=eight"])
    with pytest.raises(ValueError, match=r"--set index.nlist=-1: expected an integer >= 0"):
        tuning_options(["index.nlist=-1"])


def test_a_build_with_the_old_spellings_writes_the_index_the_new_ones_write(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    common = ["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--index-type", "ivf",
              "--backend", "onnxruntime-cpu", "--quiet"]
    assert index_main([*common, "--out", str(tmp_path / "new"), "--decode-threads", "2", "--index-device", "cpu",
                       "--set", "index.nlist=2", "--set", "index.seed=7"]) == 0
    assert _notices(capsys.readouterr().err) == []
    assert index_main([*common, "--out", str(tmp_path / "old"), "--workers", "2", "--device", "cpu",
                       "--option", "nlist=2", "--option", "seed=7"]) == 0
    out, err = capsys.readouterr()
    assert len(_notices(err)) == 4 and json.loads(out)["count"] > 0
    new, old = (GalleryIndex.read_info(tmp_path / name) for name in ("new", "old"))
    assert new["options"]["nlist"] == old["options"]["nlist"] == 2
    assert new["options"]["seed"] == old["options"]["seed"] == 7
    assert new["count"] == old["count"]


def test_an_unknown_set_key_exits_with_2_naming_it(tiny_bundle: Path, gallery_images: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert index_main(["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out",
                       str(tmp_path / "x"), "--set", "nlist=2"]) == 2
    assert "--set nlist: unknown key; valid keys are index.ef_construction" in capsys.readouterr().err


def test_bench_engine_threads_and_decode_threads(capsys: pytest.CaptureFixture) -> None:
    argv = ["index", "--bundle", "B", "--images", "I", "--out", "O"]
    new = bench_parser().parse_args([*argv, "--engine-threads", "3", "--decode-threads", "4"])
    assert _notices(capsys.readouterr().err) == []
    old = bench_parser().parse_args([*argv, "--threads", "3", "--workers", "4"])
    assert _notices(capsys.readouterr().err) == ["cdd-bench index: --threads is deprecated; use --engine-threads 3",
                                                  "cdd-bench index: --workers is deprecated; use --decode-threads 4"]
    assert vars(old) == vars(new)
    command = _resolved_command(old)  # what a report records: the new spellings
    assert "--engine-threads 3" in command and "--decode-threads 4" in command
    assert "--threads" not in command.replace("--engine-threads", "").replace("--search-threads", "")
    assert "--workers" not in command
