"""cdd-export's flags: ``--tensorrt-precision fp16|int8`` for the TensorRT plan (distinct from the bundle's
``--precision``), ``--compatible-with`` as the one compatibility flag; the old spellings (``--int8``,
``--set int8.compatible_with``) still work and print one line naming the new one."""

from __future__ import annotations

import pytest

from export.__main__ import _config, _overrides, _parser
from export.config import ExportConfig

_RUN = ["--run", "R", "--out", "O"]


def _export_config(argv: list[str]) -> ExportConfig:
    args = _parser().parse_args([*_RUN, *argv])
    return _config(_overrides(args), args.compatible_with)


def _notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if "deprecated" in line]


def test_tensorrt_precision_sets_the_plans_precision_and_int8_is_its_old_spelling(
    capsys: pytest.CaptureFixture,
) -> None:
    assert _export_config([]).tensorrt.int8 is False
    assert _export_config(["--tensorrt-precision", "fp16"]).tensorrt.int8 is False
    assert _export_config(["--tensorrt-precision", "int8"]).tensorrt.int8 is True
    assert _notices(capsys.readouterr().err) == []
    old = _export_config(["--int8"])
    assert _notices(capsys.readouterr().err) == ["cdd-export: --int8 is deprecated; use --tensorrt-precision int8"]
    assert old == _export_config(["--tensorrt-precision", "int8"])
    assert old.precision == "fp32"  # the bundle's ONNX graph stays fp32: the plan's precision is its own flag


def test_the_plans_int8_and_the_bundles_int8_are_refused_together() -> None:
    from export.config import ExportConfigError

    with pytest.raises(ExportConfigError, match=r"tensorrt.int8 \(--tensorrt-precision int8.*choose one"):
        _export_config(["--precision", "int8", "--tensorrt-precision", "int8"])


def test_compatible_with_names_the_teacher_for_fp32_and_the_fp32_bundle_for_int8(
    capsys: pytest.CaptureFixture,
) -> None:
    fp32 = _export_config(["--compatible-with", "bundles/demo-teacher"])
    assert (fp32.compatibility.teacher_bundle, fp32.int8.compatible_with) == ("bundles/demo-teacher", "")
    int8 = _export_config(["--precision", "int8", "--compatible-with", "bundles/demo"])
    assert (int8.compatibility.teacher_bundle, int8.int8.compatible_with) == ("", "bundles/demo")
    via_set = _export_config(["--set", "precision=int8", "--compatible-with", "bundles/demo"])
    assert via_set.int8.compatible_with == "bundles/demo"
    assert _notices(capsys.readouterr().err) == []


def test_set_int8_compatible_with_still_works_and_names_the_flag(capsys: pytest.CaptureFixture) -> None:
    old = _export_config(["--precision", "int8", "--set", "int8.compatible_with=bundles/demo"])
    assert _notices(capsys.readouterr().err) == [
        "cdd-export: --set int8.compatible_with is deprecated; use --precision int8 --compatible-with bundles/demo"]
    assert old == _export_config(["--precision", "int8", "--compatible-with", "bundles/demo"])


def test_help_shows_only_the_new_spellings() -> None:
    text = _parser().format_help()
    assert "--tensorrt-precision {fp16,int8}" in text and "--compatible-with BUNDLE" in text
    assert "--int8" not in text
