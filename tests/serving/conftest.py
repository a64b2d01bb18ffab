"""Fixtures for the serving tests (all built on the fly, in a few tenths of a second, no downloads).

- ``tiny_bundle`` (session): Path of a real model bundle: a tiny random CNN (seed 0) taking uint8 NHWC RGB
  images of TINY_HEIGHT x TINY_WIDTH and returning L2-normalised float32 embeddings of dim TINY_DIM,
  exported to ``model.onnx`` (legacy exporter, opset 17, dynamic batch) and ``model.pt2``
  (``torch.export``, dynamic batch), with a ``manifest.json`` written by ``serving.bundle`` (file sha256s,
  backends {"onnxruntime": "model.onnx", "torch": "model.pt2"}, batch range 1..TINY_MAX_BATCH).
- ``tiny_manifest`` (session): the loaded, verified `Manifest` of ``tiny_bundle``.
- ``gallery_images`` (session): Path of a folder of GALLERY_IDS x GALLERY_PER_ID small JPEGs named
  Market-style ``<pid:04d>_c<cam>s1_<n:06d>_00.jpg`` (cameras alternate 1, 2). Images of one identity are
  near-duplicates (same coloured block pattern + small noise), so each image's nearest other image has
  the same pid even through the random CNN. Do not modify it (session scope).
- ``market_root`` (session): a Market-1501 layout (``bounding_box_train/``, ``query/``,
  ``bounding_box_test/``) of the same kind of images: for each of MARKET_IDS identities one query on
  camera 1 and MARKET_GALLERY_PER_ID gallery images on camera 2, plus one distractor (pid 0).
- ``synthetic`` (session): a namespace with the sizes above (``gallery_ids``, ``gallery_per_id``,
  ``market_ids``, ``market_gallery_per_id``, ``dim``, ``max_batch``) and ``image(pid, n)``, the generator
  behind the image fixtures (uint8 (h, w, 3)); use it instead of importing this module.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from serving.bundle import BatchRange, InputSpec, Manifest, OutputSpec, Preprocess, load_bundle, sha256_file
from serving.bundle import write_manifest as _write_manifest

TINY_HEIGHT, TINY_WIDTH, TINY_DIM, TINY_MAX_BATCH = 32, 16, 16, 8
GALLERY_IDS, GALLERY_PER_ID = 5, 4
MARKET_IDS, MARKET_GALLERY_PER_ID = 4, 3
_IMAGE_HW = (48, 24)


class _TinyEmbedder(nn.Module):
    """uint8 (N, H, W, 3) RGB -> L2-normalised float32 (N, TINY_DIM); ImageNet mean/std inside the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255.0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(32 * 2, TINY_DIM, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        x = self.features(x)
        # Pool to a 2x1 grid (top / bottom halves) so the spatial layout of the pattern matters.
        x = torch.cat([x[:, :, : x.shape[2] // 2].mean((2, 3)), x[:, :, x.shape[2] // 2 :].mean((2, 3))], 1)
        return nn.functional.normalize(self.head(x), dim=1)


def synthetic_image(pid: int, n: int, size_hw: tuple[int, int] = _IMAGE_HW) -> np.ndarray:
    """Identity ``pid``'s block pattern (seeded by pid) plus noise seeded by (pid, n); uint8 (h, w, 3)."""
    base = np.random.default_rng(1000 + pid).integers(0, 256, size=(4, 2, 3)).astype(np.float32)
    h, w = size_hw
    pattern = np.kron(base, np.ones((h // 4, w // 2, 1), dtype=np.float32))
    noise = np.random.default_rng([pid, n]).normal(0.0, 6.0, size=pattern.shape)
    return np.clip(pattern + noise, 0, 255).astype(np.uint8)


def _save_jpeg(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_bundle")
    torch.manual_seed(0)
    model = _TinyEmbedder().eval()
    example = torch.zeros((2, TINY_HEIGHT, TINY_WIDTH, 3), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is deliberate (fast)
        torch.onnx.export(
            model,
            (example,),
            str(root / "model.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        )
    batch = torch.export.Dim("batch", min=1, max=TINY_MAX_BATCH)
    program = torch.export.export(model, (example,), dynamic_shapes={"images": {0: batch}})
    torch.export.save(program, str(root / "model.pt2"))
    files = {
        name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size, "role": role}
        for name, role in (("model.onnx", "onnxruntime"), ("model.pt2", "torch"))
    }
    manifest = Manifest(
        name="tiny",
        input=InputSpec(height=TINY_HEIGHT, width=TINY_WIDTH),
        output=OutputSpec(dim=TINY_DIM),
        preprocess=Preprocess(),
        batch=BatchRange(min=1, opt=4, max=TINY_MAX_BATCH),
        files=files,
        backends={"onnxruntime": "model.onnx", "torch": "model.pt2"},
        provenance={"source": "tests/serving/conftest.py tiny_bundle, torch seed 0"},
    )
    _write_manifest(root, manifest)
    return root


@pytest.fixture(scope="session")
def tiny_manifest(tiny_bundle: Path) -> Manifest:
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="session")
def gallery_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gallery_images")
    for pid in range(1, GALLERY_IDS + 1):
        for n in range(GALLERY_PER_ID):
            name = f"{pid:04d}_c{1 + n % 2}s1_{n + 1:06d}_00.jpg"
            _save_jpeg(root / name, synthetic_image(pid, n))
    return root


@pytest.fixture(scope="session")
def market_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("market1501")
    folders = {name: root / name for name in ("bounding_box_train", "query", "bounding_box_test")}
    for folder in folders.values():
        folder.mkdir()
    for pid in range(1, MARKET_IDS + 1):
        _save_jpeg(
            folders["bounding_box_train"] / f"{pid + 100:04d}_c1s1_000001_00.jpg",
            synthetic_image(pid + 100, 0),
        )
        _save_jpeg(folders["query"] / f"{pid:04d}_c1s1_000001_00.jpg", synthetic_image(pid, 0))
        for n in range(1, MARKET_GALLERY_PER_ID + 1):
            _save_jpeg(
                folders["bounding_box_test"] / f"{pid:04d}_c2s1_{n:06d}_00.jpg", synthetic_image(pid, n)
            )
    _save_jpeg(folders["bounding_box_test"] / "0000_c3s1_000001_00.jpg", synthetic_image(999, 0))
    return root


@pytest.fixture(scope="session")
def synthetic() -> SimpleNamespace:
    return SimpleNamespace(
        gallery_ids=GALLERY_IDS,
        gallery_per_id=GALLERY_PER_ID,
        market_ids=MARKET_IDS,
        market_gallery_per_id=MARKET_GALLERY_PER_ID,
        dim=TINY_DIM,
        max_batch=TINY_MAX_BATCH,
        image=synthetic_image,
    )
