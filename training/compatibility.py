"""Compatibility loss for asymmetric retrieval: the student's embedding of an image is pulled towards the
frozen teacher's embedding of the same image, so student queries can be searched against a gallery the
teacher embedded (docs/asymmetric.md).

Retrieval compares L2-normalised embeddings by cosine similarity, so the default form acts on directions
only. Off unless ``loss.compat_weight`` > 0 (the paper preset leaves it off).

Like with like: the frozen teacher runs in eval mode, so its embedding uses the BatchNorm running
statistics, as retrieval does; the student's embedding for this term is recomputed from its pooled feature
with the head's BatchNorms on running statistics too (`embed_with_running_stats`). The student's train-mode
embedding is normalised by the statistics of its batch (64 images of 16 identities), which carry a
per-batch offset the teacher's embedding does not have (docs/asymmetric.md compares the two).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import COMPAT_FORMS
from training.models.head import EmbeddingHead

__all__ = ["COMPAT_FORMS", "compatibility_loss", "embed_with_running_stats"]


def _running_batch_norm(layer: nn.BatchNorm1d, x: Tensor) -> Tensor:
    return F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, training=False,
                        eps=layer.eps)


def embed_with_running_stats(head: EmbeddingHead, pooled: Tensor) -> Tensor:
    """The head's embedding (B, D) of ``pooled`` (B, C) as evaluation computes it: both BatchNorm1d layers use
    their running statistics and leave them unchanged, whatever the head's mode. Gradients reach ``pooled``
    and the head's weights (BN affine, linear)."""
    x = torch.relu(_running_batch_norm(head.bn_pool, pooled))
    return _running_batch_norm(head.bn_embed, head.embed(x))


def compatibility_loss(student: Tensor, teacher: Tensor, form: str = "cosine") -> Tensor:
    """Distance between the student's and the (detached) teacher's embeddings of the same images.

    form "cosine": mean over the batch of 1 - cos(student, teacher), the retrieval metric itself
    (scale-free); "l2": mean of the plain (unsquared) L2 distance between the raw embeddings, which also
    pins their norm and per-dimension scale (stricter than the metric needs).

    student, teacher: (B, D) embeddings of the same B images, un-normalised (the network's output).
    Returns a 0-dim float32 tensor, 0 when the two agree. Raises ValueError for a shape mismatch or an
    unknown ``form`` (one of COMPAT_FORMS)."""
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(
            "compatibility_loss needs student and teacher embeddings of the same images, both (batch, dim); got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}; the student's embedding_dim must equal the "
            "teacher's"
        )
    s, t = student.float(), teacher.detach().float()
    if form == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-12)).mean()
    if form == "l2":
        squared = (s - t).pow(2).sum(dim=1)
        # Clamp before the square root: sqrt's gradient at 0 is infinite (the same guard as the triplet loss).
        return squared.clamp(min=1e-12).sqrt().mean()
    raise ValueError(f"loss.compat_form must be one of {COMPAT_FORMS}, found {form!r}")
