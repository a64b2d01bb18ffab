"""The exported model.onnx runs in a bare process that knows nothing of this project.

A subprocess imports only onnxruntime, numpy and PIL (plus the stdlib), reads the manifest as plain JSON,
resizes the dataset's JPEGs with PIL bilinear to the manifest's input size, feeds raw uint8 pixels and saves
the embeddings. They must match the original (unfolded, slim) PyTorch network run through the training
evaluation transform on the same files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from tiny_runs import TinyRuns

from export.pipeline import ExportResult
from export.rebuild import build_slim
from export.run_dir import load_run_dir
from training.data.layouts import load_dataset
from training.data.transforms import EvalTransform, load_rgb

_CONSUMER = textwrap.dedent('''
    import json, sys
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    bundle, paths_file, out_file = sys.argv[1:4]
    manifest = json.load(open(bundle + "/manifest.json"))
    height, width = manifest["input"]["height"], manifest["input"]["width"]
    paths = json.load(open(paths_file))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((width, height), Image.BILINEAR),
                                  dtype=np.uint8) for p in paths])
    session = ort.InferenceSession(bundle + "/" + manifest["backends"]["onnxruntime"],
                                   providers=["CPUExecutionProvider"])
    name_in, name_out = manifest["input"]["name"], manifest["output"]["name"]
    whole = session.run([name_out], {name_in: pixels})[0]
    single = np.concatenate([session.run([name_out], {name_in: pixels[i:i + 1]})[0] for i in range(len(pixels))])
    np.save(out_file, np.stack([whole, single]))
    project = {m.split(".")[0] for m in sys.modules} & {"torch", "training", "export", "serving"}
    assert not project, f"the consumer imported {project}"
''')


def test_plain_onnxruntime_consumer_matches_pytorch(student_bundle: ExportResult, tiny_run_dir: TinyRuns,
                                                    tmp_path: Path) -> None:
    run = load_run_dir(tiny_run_dir.student50)
    splits = load_dataset("market1501", tiny_run_dir.data_root)
    paths = [r.path for r in [*splits.query, *splits.gallery]]
    transform = EvalTransform(run.spec.input_size, run.mean, run.std)
    with torch.no_grad():
        reference = build_slim(run)(torch.stack([transform(load_rgb(p)) for p in paths])).numpy()
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)

    (tmp_path / "paths.json").write_text(json.dumps(paths))
    (tmp_path / "consumer.py").write_text(_CONSUMER)
    result = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "consumer.py"), str(student_bundle.bundle),
         str(tmp_path / "paths.json"), str(tmp_path / "out.npy")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    whole, single = np.load(tmp_path / "out.npy")
    assert whole.shape == (len(paths), 16) and len(paths) % 2 == 1  # an odd batch, and batch 1
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(whole, reference, atol=1e-4)
    np.testing.assert_allclose(single, reference, atol=1e-4)
