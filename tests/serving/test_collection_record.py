"""The build record a Milvus collection carries (`serving.index.collection_record`): what a resumed build
and a server accept and refuse. Pure functions over the record; the Milvus round trip is in
tests/serving/test_ray_build.py."""

from __future__ import annotations

import json

import pytest

from serving.index.collection_record import build_record, check_resumable, check_served
from serving.index.errors import GalleryIndexError, IndexBundleMismatch


def _record(manifest, **changes) -> dict:
    args = {"index_type": "hnsw", "options": {"ef_search": 64}, "engine": "ray", "id_rule": "relative-path",
            "max_pixels": 16_000_000} | changes
    return build_record(manifest, **args)


def test_record_names_bundle_decoding_and_build_settings(tiny_manifest) -> None:
    record = _record(tiny_manifest)
    assert record["bundle_sha256"] == tiny_manifest.sha256() and record["dim"] == tiny_manifest.output.dim
    assert record["decoding"]["rule"] == tiny_manifest.preprocess.decode == "rgb8-v1"
    assert record["decoding"]["input_hw"] == [tiny_manifest.input.height, tiny_manifest.input.width]
    assert json.loads(json.dumps(record)) == record  # stored as JSON text in the collection's properties


def test_resume_accepts_the_same_build_even_from_another_engine(tiny_manifest) -> None:
    check_resumable(_record(tiny_manifest, engine="local"), _record(tiny_manifest), "c")


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"index_type": "ivf"}, "index_type"), ({"options": {"ef_search": 128}}, "options"),
     ({"id_rule": "column:key"}, "id_rule"), ({"max_pixels": 1_000}, "decoding")],
)
def test_resume_refuses_other_settings(tiny_manifest, changes: dict, field: str) -> None:
    with pytest.raises(GalleryIndexError, match=f"built with {field} .*--restart"):
        check_resumable(_record(tiny_manifest), _record(tiny_manifest, **changes), "c")


def test_resume_refuses_another_bundle_or_no_record(tiny_manifest) -> None:
    other = _record(tiny_manifest) | {"bundle_sha256": "0" * 64, "bundle_name": "other"}
    with pytest.raises(IndexBundleMismatch, match="0{64} \\(other\\)"):
        check_resumable(other, _record(tiny_manifest), "c")
    with pytest.raises(GalleryIndexError, match="no build record"):
        check_resumable(None, _record(tiny_manifest), "c")


def test_server_refuses_a_collection_rebuilt_with_another_bundle(tiny_manifest) -> None:
    record = _record(tiny_manifest)
    check_served(record, tiny_manifest.sha256(), "c")
    check_served(None, tiny_manifest.sha256(), "c")  # collections built before records existed
    with pytest.raises(IndexBundleMismatch, match="rebuilt"):
        check_served(record, "f" * 64, "c")
