"""Model bundle schema: ``manifest.json`` plus model files, verified by sha256.

Stdlib only: export writes bundles with it, serving reads them, and neither side restates what the
manifest owns (input size, preprocessing, embedding dim, metric, batch range).

A bundle directory holds::

    manifest.json      this schema (``SCHEMA_VERSION``)
    model.onnx         uint8 NHWC RGB images -> L2-normalised float32 embeddings
    model.pt2          (optional) torch.export program of the same graph, for the torch backend
    model.plan         (optional) TensorRT engine; stamped with GPU, compute capability, TRT version
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cdd_common.atomic_file import write_text_atomic
from cdd_common.json_document import read_json_object
from serving.bundle_files import BundleError, check_backend_files, resolve_inside

__all__ = [
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "DECODE_RULE",
    "PRECISIONS",
    "BundleError",
    "InputSpec",
    "OutputSpec",
    "Preprocess",
    "BatchRange",
    "Manifest",
    "sha256_file",
    "load_bundle",
    "write_manifest",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
DECODE_RULE = "rgb8-v1"
"""The image decoding rule this build implements (``cdd_common.image_decoding.DECODE_RULE``)."""
PRECISIONS = ("fp32", "int8")
"""Numeric precision of ``model.onnx``; the contract (uint8 in, unit float32 out) is the same for both."""


@dataclass(frozen=True)
class InputSpec:
    """The graph input: ``dtype`` images in ``layout`` at ``height`` x ``width`` (pixels), RGB order."""

    name: str = "images"
    dtype: str = "uint8"
    layout: str = "NHWC"
    height: int = 128
    width: int = 64
    channels: int = 3
    color: str = "RGB"


@dataclass(frozen=True)
class OutputSpec:
    """The graph output: (N, dim) float32 embeddings; ``normalized`` means unit L2 norm per row."""

    name: str = "embeddings"
    dtype: str = "float32"
    dim: int = 512
    normalized: bool = True


@dataclass(frozen=True)
class Preprocess:
    """What happens before the graph: decode by rule ``decode`` (see ``cdd_common/image_decoding.py``: JPEG
    draft towards the input size when ``jpeg_draft``, EXIF orientation applied when ``exif_orientation``,
    alpha composited over the RGB ``background``, 16-bit gray keeps its high byte), convert to ``color``,
    resize (``policy`` "stretch" = resize straight to the input size, PIL ``interpolation``).
    ``normalization`` "in_graph" means mean/std (0..1 scale) are applied inside the model and consumers
    must not apply them again. Training's evaluation transform decodes by the same rule."""

    policy: str = "stretch"
    interpolation: str = "bilinear"
    color: str = "RGB"
    normalization: str = "in_graph"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    decode: str = DECODE_RULE
    exif_orientation: bool = True
    jpeg_draft: bool = True
    background: tuple[int, int, int] = (255, 255, 255)

    def problems(self) -> list[str]:
        """What is wrong with the decoding policy fields (empty when they are usable)."""
        found = []
        if self.decode != DECODE_RULE:
            found.append(f"preprocess.decode is {self.decode!r}, this build decodes by rule {DECODE_RULE!r}")
        for name in ("exif_orientation", "jpeg_draft"):
            if not isinstance(getattr(self, name), bool):
                found.append(f"preprocess.{name} must be true or false, found {getattr(self, name)!r}")
        background = self.background
        if len(background) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in background):
            found.append(f"preprocess.background must be 3 integers 0..255 (RGB), found {list(background)}")
        return found


@dataclass(frozen=True)
class BatchRange:
    """Batch sizes the exported graphs accept (inclusive); ``opt`` is the TensorRT profile optimum."""

    min: int = 1
    opt: int = 16
    max: int = 64


@dataclass(frozen=True)
class Manifest:
    """Everything downstream needs to run a bundle. ``files`` maps file name -> {"sha256", "bytes", "role"};
    ``cost`` holds {"student"|"teacher": {"params", "flops"}} (flops = multiply-accumulates at the input size,
    params exclude the ID classifier); ``parity`` holds per-gate {"max_abs_err", "min_cosine", ...};
    ``backends`` maps backend name -> file name (and for "tensorrt", the stamp of the machine it was built on).
    ``precision`` is "fp32" or "int8" (ONNX Runtime static quantisation; ``quantization`` then records the
    format, calibration settings and timing, and ``parity["int8"]`` the retrieval gate's numbers). A manifest
    without the field is fp32; fp32 manifests are written without it, so their ``sha256`` is unchanged.
    ``compatible_with`` lists the ``sha256`` of other bundles whose gallery indexes this bundle may search
    (written by export only after measuring cross-bundle mAP; see ``index_compatible``)."""

    name: str
    input: InputSpec
    output: OutputSpec
    preprocess: Preprocess
    batch: BatchRange
    metric: str = "cosine"
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    backends: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    precision: str = "fp32"
    quantization: dict[str, Any] = field(default_factory=dict)
    compatible_with: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.precision == "fp32" and not self.quantization:
            del data["precision"], data["quantization"]
        if not self.compatible_with:
            del data["compatible_with"]
        return data

    def index_compatible(self, bundle_sha256: str | None) -> bool:
        """True when vectors of the bundle with ``bundle_sha256`` (an index's stamp) may be searched with this
        bundle's: it is this bundle, or one this manifest lists in ``compatible_with``."""
        return bundle_sha256 == self.sha256() or bundle_sha256 in self.compatible_with

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "manifest") -> Manifest:
        """Build from parsed JSON; raises BundleError naming ``source`` and the bad field."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{source}: schema_version is {version!r}, this build reads {SCHEMA_VERSION}; "
                "re-export the bundle with this version of cdd-export"
            )
        precision = data.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise BundleError(f"{source}: precision is {precision!r}, this build reads {PRECISIONS}; re-export the "
                              "bundle with this version of cdd-export")
        try:
            pre = dict(data["preprocess"])
            pre["mean"] = tuple(pre["mean"])
            pre["std"] = tuple(pre["std"])
            if "background" in pre:
                pre["background"] = tuple(pre["background"])
            manifest = cls(
                name=data["name"],
                input=InputSpec(**data["input"]),
                output=OutputSpec(**data["output"]),
                preprocess=Preprocess(**pre),
                batch=BatchRange(**data["batch"]),
                metric=data.get("metric", "cosine"),
                files=dict(data.get("files", {})),
                backends=dict(data.get("backends", {})),
                cost=dict(data.get("cost", {})),
                parity=dict(data.get("parity", {})),
                provenance=dict(data.get("provenance", {})),
                schema_version=version,
                precision=precision,
                quantization=dict(data.get("quantization", {})),
                compatible_with=tuple(str(sha) for sha in data.get("compatible_with", ())),
            )
        except KeyError as exc:
            raise BundleError(f"{source}: required field {exc.args[0]!r} is missing") from exc
        except TypeError as exc:
            raise BundleError(f"{source}: malformed field: {exc}") from exc
        problems = manifest.preprocess.problems()
        if problems:
            raise BundleError(f"{source}: " + "; ".join(problems) + "; re-export the bundle or upgrade serving")
        check_backend_files(manifest.backends, manifest.files, source)
        return manifest

    def sha256(self) -> str:
        """Stable identity of the bundle: sha256 of the canonical manifest JSON (which lists file hashes)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks (serving's one file digest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(directory: str | Path, verify: bool = True) -> Manifest:
    """Read ``directory/manifest.json``; with ``verify`` check that every listed file lies inside the bundle
    and has its sha256. Backends later read their model through `serving.bundle_files.read_checked_file`,
    which checks the bytes it hands over again.

    Raises BundleError (missing dir/manifest, bad JSON, wrong schema, a backend file that is not a plain
    name listed in ``files``, a file outside the bundle or missing, checksum mismatch)."""
    root = Path(directory)
    path = root / MANIFEST_NAME
    fix = f"create the bundle with `cdd-export --run RUN --out {root}`"
    data = read_json_object(path, BundleError, "bundle manifest", fix)
    manifest = Manifest.from_dict(data, source=str(path))
    if verify:
        for name, info in manifest.files.items():
            if not (root / name).is_file():
                raise BundleError(f"{path}: lists {name!r} but {root / name} is missing; re-export the bundle")
            file_path = resolve_inside(root, name)
            found = sha256_file(file_path)
            if found != info.get("sha256"):
                raise BundleError(
                    f"{file_path}: sha256 is {found}, manifest expects {info.get('sha256')}; the file was "
                    "modified or corrupted after export; re-export the bundle"
                )
    return manifest


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename) into ``directory``."""
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n"
    return write_text_atomic(Path(directory) / MANIFEST_NAME, text)
