"""Feature extraction and model evaluation with a tiny model whose embeddings are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.evaluate import evaluate_model, extract_features
from training.metrics import evaluate_retrieval


class _MeanColour(nn.Module):
    """Embedding = per-channel mean of the image (B, 3); records the training flag and samples seen."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.modes: list[bool] = []
        self.samples_seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        self.samples_seen += images.shape[0]
        return images.mean(dim=(2, 3)) * self.scale


class _ColourImages(Dataset):
    """Constant-colour 3x4x2 images yielding (image, pid, camid, index)."""

    def __init__(self, colours: list[tuple[float, float, float]], pids: list[int], cams: list[int]) -> None:
        self.colours, self.pids, self.cams = colours, pids, cams

    def __len__(self) -> int:
        return len(self.colours)

    def __getitem__(self, index: int):
        image = torch.tensor(self.colours[index]).reshape(3, 1, 1).expand(3, 4, 2).clone()
        return image, self.pids[index], self.cams[index], index


# Colours are the embeddings.
QUERY = _ColourImages([(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)], pids=[1, 2], cams=[0, 0])
GALLERY = _ColourImages(
    [(1.0, 0.0, 0.0), (0.6, 0.0, 0.8), (0.5, 0.5, 0.0), (0.0, 1.0, 0.1)],
    pids=[1, 3, 1, 2],
    cams=[0, 1, 1, 1],
)


def test_extract_features_returns_known_embeddings_in_order_and_restores_mode() -> None:
    model = _MeanColour()
    model.train()
    feats, ids, cams = extract_features(model, GALLERY, "cpu", batch_size=3)
    assert feats.dtype == np.float32 and feats.shape == (4, 3)
    np.testing.assert_allclose(feats, np.array(GALLERY.colours, dtype=np.float32), rtol=1e-6)
    assert ids.tolist() == [1, 3, 1, 2] and cams.tolist() == [0, 1, 1, 1]
    assert model.modes == [False, False]  # two batches (3 + 1), both in eval mode
    assert model.training  # restored
    model.eval()
    extract_features(model, GALLERY, "cpu")
    assert not model.training  # an eval-mode model stays in eval mode


def test_extract_features_accepts_a_loader() -> None:
    loader = DataLoader(QUERY, batch_size=1, shuffle=False)
    feats, ids, _ = extract_features(_MeanColour(), loader, torch.device("cpu"))
    np.testing.assert_allclose(feats, [[1, 0, 0], [0, 1, 0]])
    assert ids.tolist() == [1, 2]


def test_extract_features_rejects_bad_model_output_and_empty_data() -> None:
    class _Flat(nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.flatten()

    with pytest.raises(ValueError, match=r"\(B, D\) embedding"):
        extract_features(_Flat(), QUERY, "cpu")
    with pytest.raises(ValueError, match="empty dataset"):
        extract_features(_MeanColour(), _ColourImages([], [], []), "cpu")


def test_evaluate_model_reid_protocol_known_answer() -> None:
    # gallery: g0 red (id 1, cam 0), g1 (0.9, 0, 0.1) (id 3), g2 (0.5, 0.5, 0) (id 1, cam 1),
    #          g3 (0, 1, 0.1) (id 2)
    # query 1 (red, id 1, cam 0): cosines g0 1.0, g1 0.994, g2 0.707, g3 0.0; g0 removed (same id + cam)
    #   -> ranking g1, g2 (match), g3 -> AP = 1/2, rank-1 miss
    # query 2 (green, id 2): g3 (cos 0.995) first -> AP = 1
    # mAP = (0.5 + 1) / 2 = 0.75, rank-1 = 1/2
    gallery = _ColourImages(
        [(1.0, 0.0, 0.0), (0.9, 0.0, 0.1), (0.5, 0.5, 0.0), (0.0, 1.0, 0.1)], GALLERY.pids, GALLERY.cams
    )
    metrics = evaluate_model(_MeanColour(), QUERY, gallery, "cpu", protocol="reid")
    assert metrics.mAP == pytest.approx(0.75)
    assert (metrics.rank1, metrics.num_valid_queries) == (0.5, 2)
    # class protocol on separate sets ignores cameras: g0 stays -> query 1 ranking g0 (match), g1, g2 (match)
    # -> AP = (1 + 2/3) / 2; mAP = (5/6 + 1) / 2 = 11/12
    assert evaluate_model(_MeanColour(), QUERY, gallery, "cpu", protocol="class").mAP == pytest.approx(
        11 / 12
    )


def test_evaluate_model_matches_evaluate_retrieval_on_extracted_features() -> None:
    model = _MeanColour()
    q = extract_features(model, QUERY, "cpu")
    g = extract_features(model, GALLERY, "cpu")
    expected = evaluate_retrieval(q[0], g[0], q[1], g[1], q[2], g[2])
    assert evaluate_model(model, QUERY, GALLERY, "cpu", protocol="reid", chunk_size=1) == expected


def test_class_protocol_extracts_once_and_removes_self() -> None:
    # ids 1, 2, 1 at red, orange-red, green-ish: item 0's neighbours: item 1 (id 2) then item 2 (id 1)
    data = _ColourImages([(1.0, 0.0, 0.0), (1.0, 0.2, 0.0), (0.3, 1.0, 0.0)], pids=[1, 2, 1], cams=[0, 0, 0])
    model = _MeanColour()
    metrics = evaluate_model(model, data, None, "cpu", protocol="class")
    assert model.samples_seen == 3  # one extraction, not two
    # item 0: ranking item 1, item 2 (match) -> AP 1/2; item 1 skipped (only id 2);
    # item 2: cos to item 1 = 0.49 > cos to item 0 = 0.29 -> AP 1/2
    assert metrics.mAP == pytest.approx(0.5)
    assert (metrics.num_queries, metrics.num_valid_queries) == (3, 2)


def test_evaluate_model_rejects_unknown_protocol_and_missing_gallery() -> None:
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate_model(_MeanColour(), QUERY, GALLERY, "cpu", protocol="market")
    with pytest.raises(ValueError, match="needs a gallery_dataset"):
        evaluate_model(_MeanColour(), QUERY, None, "cpu", protocol="reid")
