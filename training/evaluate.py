"""Feature extraction and retrieval evaluation of a torch model (protocol: `training.metrics`).

Datasets yield `(image_tensor, label, camid, index)`; for query/gallery sets `label` is the original
identity, so query and gallery ids are comparable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.metrics import RetrievalMetrics, evaluate_retrieval

__all__ = ["PROTOCOLS", "evaluate_model", "extract_features"]

# "reid": query vs gallery, same id + same camera removed. "class": no cameras; when query and gallery
# are the same dataset, each query is removed from its own ranking.
PROTOCOLS = ("reid", "class")


def _loader(
    data: Dataset | DataLoader, batch_size: int, num_workers: int, device: torch.device
) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )


def _unpack(batch: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(batch, list | tuple) or len(batch) != 4:
        raise ValueError(
            "evaluation datasets must yield (image_tensor, label, camid, index) tuples; got a batch of type "
            f"{type(batch).__name__} with {len(batch) if isinstance(batch, list | tuple) else '?'} fields"
        )
    images, labels, cams, _ = batch
    return images, torch.as_tensor(labels), torch.as_tensor(cams)


def _embed(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    output = model(images.to(device, non_blocking=True))
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != images.shape[0]:
        found = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            "model must map a (B, 3, H, W) batch to a (B, D) embedding in eval mode; "
            f"for B={images.shape[0]} it returned {found}"
        )
    return output.float().cpu()


def extract_features(
    model: nn.Module,
    dataset_or_loader: Dataset | DataLoader,
    device: torch.device | str,
    batch_size: int = 64,
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run `model` in eval mode over the data; return (features float32 (N, D), ids (N,), cams (N,)).

    Rows follow the loader's order (dataset order when a Dataset is given). Features are the raw model
    output (not normalised). The model's training flag is restored afterwards. Raises ValueError on
    empty data or an output that is not (B, D).
    """
    device = torch.device(device)
    loader = _loader(dataset_or_loader, batch_size, num_workers, device)
    feats: list[torch.Tensor] = []
    ids: list[torch.Tensor] = []
    cams: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                images, labels, camids = _unpack(batch)
                feats.append(_embed(model, images, device))
                ids.append(labels.reshape(-1).cpu())
                cams.append(camids.reshape(-1).cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("extract_features got an empty dataset; nothing to evaluate")
    return (
        torch.cat(feats).numpy().astype(np.float32, copy=False),
        torch.cat(ids).numpy(),
        torch.cat(cams).numpy(),
    )


def evaluate_model(
    model: nn.Module,
    query_dataset: Dataset | DataLoader,
    gallery_dataset: Dataset | DataLoader | None,
    device: torch.device | str,
    protocol: str,
    batch_size: int = 64,
    num_workers: int = 0,
    chunk_size: int = 256,
    on_chunk: Callable[[int, int], None] | None = None,
) -> RetrievalMetrics:
    """Extract query and gallery features and compute mAP / CMC (`training.metrics.evaluate_retrieval`).

    protocol "reid": same identity + same camera gallery items are removed per query.
    protocol "class": cameras are ignored; if `gallery_dataset` is None or the query dataset itself,
    features are extracted once and each query is removed only from its own ranking.
    Raises ValueError for an unknown protocol, or a missing gallery under "reid".
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    query = extract_features(model, query_dataset, device, batch_size, num_workers)
    if protocol == "class" and (gallery_dataset is None or gallery_dataset is query_dataset):
        feats, ids, _ = query
        return evaluate_retrieval(
            feats, feats, ids, ids, query_is_gallery=True, chunk_size=chunk_size, on_chunk=on_chunk
        )
    if gallery_dataset is None:
        raise ValueError('protocol "reid" needs a gallery_dataset; only protocol "class" may omit it')
    gallery = extract_features(model, gallery_dataset, device, batch_size, num_workers)
    cams = (query[2], gallery[2]) if protocol == "reid" else (None, None)
    return evaluate_retrieval(
        query[0],
        gallery[0],
        query[1],
        gallery[1],
        query_cams=cams[0],
        gallery_cams=cams[1],
        chunk_size=chunk_size,
        on_chunk=on_chunk,
    )
