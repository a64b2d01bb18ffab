"""The one JSON-document reader (`cdd_common.json_document`): the object, or the caller's error naming file,
content and fix."""

from __future__ import annotations

import pytest

from cdd_common.json_document import read_json_object


class _Bad(ValueError):
    pass


def test_reads_an_object_or_raises_the_callers_error(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text('{"a": [1, 2]}')
    assert read_json_object(path, _Bad, "doc", "fix it") == {"a": [1, 2]}
    cases = {"missing.json": None, "broken.json": "{not json", "list.json": "[1, 2]", "binary.json": b"\xff\xfe"}
    messages = {"missing.json": "doc not found", "broken.json": "doc is not readable JSON",
                "list.json": "doc must be a JSON object, found list", "binary.json": "doc is not readable JSON"}
    for name, content in cases.items():
        target = tmp_path / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif content is not None:
            target.write_text(content)
        with pytest.raises(_Bad, match=rf"{name}: {messages[name]}.*; fix it$"):
            read_json_object(target, _Bad, "doc", "fix it")
