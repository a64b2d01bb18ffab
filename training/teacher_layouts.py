"""Map a ResNet embedding model trained elsewhere onto this project's `ReIDNet` (``cdd-train import-teacher``).

Checkpoint formats (key names read from each project's published model code; no code of theirs is used):

- ``torchvision``: a plain ``state_dict`` of torchvision's ResNet names (``conv1``, ``bn1``, ``layer1.0.conv1``,
  ``layer1.0.downsample.0``, ...), possibly wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``.
- ``timm``: the same backbone names (timm's plain ``resnet18/34/50/101/152``), in a timm training checkpoint
  ``{"state_dict": ..., "state_dict_ema": ...}`` (``ema=True`` takes the EMA weights); ``module.`` prefixes
  of data-parallel training are stripped. Deep-stem / avg-down variants (``resnet50d``) do not map.
- ``fast-reid``: ``{"model": ...}`` with the backbone under ``backbone.`` and the ``EmbeddingHead`` under
  ``heads.``: ``heads.bottleneck`` is [a bias-free 1x1 conv to ``embedding_dim`` when it is > 0] then [the
  BNNeck BatchNorm when ``bnneck``]; ``heads.weight`` (its classifier) is dropped; ``pixel_mean`` /
  ``pixel_std`` (0..255 scale) are returned for the caller to compare with its data config. GeM pooling,
  IBN, SE and non-local blocks do not map (this network average-pools plain ResNet blocks).

The imported model computes ``embedding = BNNeck(W @ avgpool(backbone(x)) + b)`` (each part optional). It
lands in `EmbeddingHead` (``bn_embed(embed(relu(bn_pool(pooled))))``) exactly: ``bn_pool`` becomes the
identity (and the ReLU is then one too: pooled post-ReLU features are >= 0), ``embed`` holds W (identity
without an embedding layer), and ``bn_embed`` the BNNeck with the bias b folded into its running mean
(identity BN without BNNeck). Anything that does not map is refused naming the keys or shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from training.arch_spec import DEPTHS, stage_widths

__all__ = ["FORMATS", "HeadLayout", "ImportError_", "MappedWeights", "unwrap_state", "map_weights", "infer_backbone"]

FORMATS = ("torchvision", "timm", "fast-reid")
_BN_EPS = 1e-5
_HINTS = {
    "pool_layer.p": "GeM pooling (learned p) does not map: this network average-pools; retrain with avg pooling",
    ".se.": "squeeze-excitation blocks (with_se) do not map onto plain ResNet blocks",
    ".IN.": "IBN blocks (with_ibn) do not map onto plain ResNet blocks",
    "NL_": "non-local blocks (with_nl) do not map onto plain ResNet blocks",
    "conv1.0.": "a deep stem (timm resnet*d / resnet*c) does not map; use a plain ResNet",
}


class ImportError_(ValueError):  # noqa: N801 (not the builtin ImportError)
    """A checkpoint that does not map onto the network; the message names the keys or shapes and the fix."""


@dataclass(frozen=True)
class HeadLayout:
    """The user's head. ``embedding_dim`` 0: no embedding layer (the embedding is the pooled feature);
    ``bnneck``: a BatchNorm on the embedding; ``embedding_key`` / ``bnneck_key``: their key prefixes (None:
    the format's default); ``ignore``: key prefixes to drop (classifiers); ``ema``: timm EMA weights."""

    embedding_dim: int = 0
    bnneck: bool = True
    last_stride: int = 1
    embedding_key: str | None = None
    bnneck_key: str | None = None
    ignore: tuple[str, ...] = ()
    ema: bool = False


@dataclass
class MappedWeights:
    """Our network's tensors (backbone + head, no classifier), the inferred depth / width / dims, and what
    was dropped. ``pixel_mean`` / ``pixel_std``: fast-reid's normalisation (0..1 scale) or None."""

    state: dict[str, torch.Tensor]
    depth: int
    width: float
    feature_dim: int
    embedding_dim: int
    dropped: list[str] = field(default_factory=list)
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None


def _defaults(fmt: str, head: HeadLayout) -> tuple[str, str, str, tuple[str, ...]]:
    """(backbone prefix, embedding key, bnneck key, ignored prefixes) of a format."""
    if fmt == "fast-reid":
        neck = "heads.bottleneck.1" if head.embedding_dim > 0 else "heads.bottleneck.0"
        return ("backbone.", head.embedding_key or "heads.bottleneck.0", head.bnneck_key or neck,
                ("heads.weight", "heads.classifier.", "pixel_mean", "pixel_std", *head.ignore))
    classifier = ("fc.",) if head.embedding_dim == 0 and head.embedding_key is None else ()
    return "", head.embedding_key or "fc", head.bnneck_key or "bnneck", (*classifier, *head.ignore)


def unwrap_state(checkpoint: object, fmt: str, head: HeadLayout, source: str) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint of format ``fmt`` (``module.`` prefixes stripped)."""
    if fmt not in FORMATS:
        raise ImportError_(f"{source}: format {fmt!r} is not one of {FORMATS}")
    keys = {"timm": ("state_dict_ema",) if head.ema else ("state_dict", "model"),
            "fast-reid": ("model",), "torchvision": ("state_dict", "model")}[fmt]
    state = checkpoint
    if isinstance(state, Mapping):
        for key in keys:
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ImportError_(f"{source}: no tensor state_dict found for format {fmt!r} (looked under {list(keys)} "
                           f"and at the top level; found {found}); check --format")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def infer_backbone(state: Mapping[str, torch.Tensor], prefix: str, source: str) -> tuple[int, float]:
    """(depth, width multiplier) from the block keys under ``prefix``."""
    counts, bottleneck = [], f"{prefix}layer1.0.conv3.weight" in state
    for stage in range(1, 5):
        n = 0
        while f"{prefix}layer{stage}.{n}.conv1.weight" in state:
            n += 1
        counts.append(n)
    kind = "bottleneck" if bottleneck else "basic"
    depth = next((d for d, (t, c) in DEPTHS.items() if t == kind and tuple(counts) == c), None)
    if depth is None or f"{prefix}conv1.weight" not in state:
        raise ImportError_(f"{source}: no ResNet backbone under {prefix or 'the top level'!r}: found {kind} blocks "
                           f"per stage {counts} (ResNet-18/34/50/101/152 have {[c for _, c in DEPTHS.values()]}); "
                           "check --format (fast-reid keeps the backbone under 'backbone.')")
    stem = int(state[f"{prefix}conv1.weight"].shape[0])
    width = stem / 64
    if stage_widths(width)[0] != stem:
        raise ImportError_(f"{source}: conv1 has {stem} output channels, not 64 x a width multiplier")
    return depth, width


def _take(state: dict[str, torch.Tensor], key: str, used: set[str]) -> torch.Tensor | None:
    if key in state:
        used.add(key)
        return state[key]
    return None


def _identity_bn(size: int, mean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    return {"weight": torch.ones(size), "bias": torch.zeros(size),
            "running_mean": torch.zeros(size) if mean is None else mean.clone(),
            "running_var": torch.full((size,), 1.0 - _BN_EPS), "num_batches_tracked": torch.tensor(0)}


def _head(state: dict[str, torch.Tensor], embed_key: str, neck_key: str, head: HeadLayout, channels: int,
          used: set[str], source: str) -> dict[str, torch.Tensor]:
    dim = head.embedding_dim or channels
    out = {f"head.bn_pool.{k}": v for k, v in _identity_bn(channels).items()}
    bias = None
    if head.embedding_dim > 0:
        weight = _take(state, f"{embed_key}.weight", used)
        if weight is None:
            raise ImportError_(f"{source}: embedding_dim {head.embedding_dim} but no {embed_key}.weight; set "
                               "--embedding-key to the embedding layer's key prefix or --embedding-dim 0")
        weight = weight.reshape(weight.shape[0], -1) if weight.dim() == 4 and weight.shape[2:] == (1, 1) else weight
        if tuple(weight.shape) != (dim, channels):
            raise ImportError_(f"{source}: {embed_key}.weight has shape {tuple(weight.shape)}, expected "
                               f"({dim}, {channels}) (embedding_dim x backbone channels); check --embedding-dim")
        bias = _take(state, f"{embed_key}.bias", used)
    else:
        weight = torch.eye(channels)
    out["head.embed.weight"] = weight.float().clone()
    shift = None if bias is None else -bias.float()
    neck = {"head.bn_embed." + k: v for k, v in _identity_bn(dim, shift).items()}
    if head.bnneck:
        for name in ("weight", "bias", "running_mean", "running_var"):
            tensor = _take(state, f"{neck_key}.{name}", used)
            if tensor is None:
                raise ImportError_(f"{source}: bnneck is on but {neck_key}.{name} is missing; set --bnneck-key to the "
                                   "BNNeck's key prefix, or --no-bnneck")
            if tuple(tensor.shape) != (dim,):
                raise ImportError_(f"{source}: {neck_key}.{name} has shape {tuple(tensor.shape)}, expected ({dim},)")
            neck[f"head.bn_embed.{name}"] = tensor.float().clone()
        _take(state, f"{neck_key}.num_batches_tracked", used)
        if bias is not None:  # BN(Wx + b) = BN'(Wx) with running_mean' = running_mean - b
            neck["head.bn_embed.running_mean"] = neck["head.bn_embed.running_mean"] - bias.float()
    out.update(neck)
    return out


def _refuse_leftovers(state: Mapping[str, torch.Tensor], used: set[str], ignore: tuple[str, ...],
                      missing: list[str], source: str) -> list[str]:
    dropped = sorted(k for k in state if k not in used and any(k.startswith(p) for p in ignore))
    extra = sorted(k for k in state if k not in used and k not in dropped)
    if missing or extra:
        hints = sorted({hint for pattern, hint in _HINTS.items() for key in extra if pattern in key})
        raise ImportError_(f"{source}: does not map onto a plain ResNet with this head: {len(missing)} missing "
                           f"key(s) {missing[:8]}, {len(extra)} unused key(s) {extra[:8]}"
                           + (f" ({'; '.join(hints)})" if hints else "")
                           + "; check --format and the head flags (--embedding-dim, --bnneck, --embedding-key, "
                           "--bnneck-key), or drop a classifier with --ignore PREFIX")
    return dropped


def map_weights(state: dict[str, torch.Tensor], fmt: str, head: HeadLayout, backbone_keys: Mapping[str, torch.Size],
                depth: int, width: float, source: str) -> MappedWeights:
    """Our tensors for a backbone whose keys and shapes are ``backbone_keys`` (``backbone.*``, no indicators),
    plus the head. Raises ImportError_ naming missing / unused keys or differing shapes."""
    prefix, embed_key, neck_key, ignore = _defaults(fmt, head)
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    missing, shapes = [], []
    for ours, shape in backbone_keys.items():
        theirs = prefix + ours[len("backbone."):]
        tensor = _take(state, theirs, used)
        if tensor is None:
            if not ours.endswith("num_batches_tracked"):
                missing.append(theirs)
            continue
        if tuple(tensor.shape) != tuple(shape):
            shapes.append(f"{theirs} {tuple(tensor.shape)} vs expected {tuple(shape)}")
        out[ours] = tensor.clone()
    if shapes:
        raise ImportError_(f"{source}: {len(shapes)} tensor(s) have other shapes than a ResNet-{depth} of width "
                           f"{width}: {shapes[:6]}; the checkpoint is not a plain ResNet of that size")
    channels = stage_widths(width)[4] * (4 if DEPTHS[depth][0] == "bottleneck" else 1)
    head_state = _head(state, embed_key, neck_key, head, channels, used, source) if not missing else {}
    pixel = {}
    for name in ("pixel_mean", "pixel_std"):
        if fmt == "fast-reid" and name in state:
            pixel[name] = tuple(round(float(v) / 255.0, 6) for v in state[name].reshape(-1))
    dropped = _refuse_leftovers(state, used, ignore, missing, source)
    out.update(head_state)
    return MappedWeights(out, depth, width, channels, head.embedding_dim or channels, dropped,
                         pixel.get("pixel_mean"), pixel.get("pixel_std"))
