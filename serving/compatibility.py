"""Asymmetric retrieval: which gallery index a bundle may search.

A bundle searches an index built with the bundle itself, or an index built with another bundle (the
teacher, say) whose sha256 its manifest lists in ``compatible_with`` (`serving.bundle.Manifest.index_compatible`).
``cdd-export --compatible-with TEACHER`` lists it only after measuring, on real query and gallery images,
that the bundle's queries against a gallery embedded by TEACHER reach TEACHER's own mAP within a
tolerance; the numbers travel in ``manifest.parity["compatibility"]``, one entry per teacher::

    {"bundle_sha256": <Manifest.sha256() of TEACHER>, "bundle_name": "demo-teacher",
     "tolerance_map_points": 1.0, "dataset": ..., "protocol": "reid", "num_queries": ..., "gallery_size": ...,
     "mAP": {"gallery_bundle": 49.7, "this_bundle": 50.7, "asymmetric": 49.4},
     "rank1": {"gallery_bundle": ..., "this_bundle": ..., "asymmetric": ...}}

Stdlib only (the serving host needs nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.bundle import BundleError, Manifest
from serving.index.errors import IndexBundleMismatch

__all__ = ["Compatibility", "GalleryBundle", "declared_compatibility", "gallery_bundle_for"]

_REQUIRED = ("bundle_sha256", "bundle_name", "tolerance_map_points", "mAP", "rank1")


@dataclass(frozen=True)
class Compatibility:
    """One declaration: this bundle's queries may search galleries embedded by bundle ``bundle_sha256``.
    ``mAP`` / ``rank1`` hold percent for "gallery_bundle" (its own queries), "this_bundle" (its own
    gallery) and "asymmetric" (this bundle's queries on its gallery), measured at export."""

    bundle_sha256: str
    bundle_name: str
    tolerance_map_points: float
    mAP: dict[str, float]
    rank1: dict[str, float]
    details: dict[str, Any]

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Compatibility:
        """Parse one ``compatible_with`` entry; raises BundleError naming ``source`` and the bad field."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: expected an object, found {type(data).__name__}; re-export the bundle")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise BundleError(f"{source}: missing field(s) {missing}; re-export the bundle with cdd-export "
                              "--compatible-with")
        for key in ("mAP", "rank1"):
            values = data[key]
            if not isinstance(values, dict) or not {"gallery_bundle", "asymmetric"} <= set(values):
                raise BundleError(f"{source}: {key} must hold 'gallery_bundle' and 'asymmetric' numbers, found "
                                  f"{values!r}; re-export the bundle")
        sha = data["bundle_sha256"]
        if not isinstance(sha, str) or len(sha) != 64:
            raise BundleError(f"{source}: bundle_sha256 must be a 64-character hex digest, found {sha!r}")
        details = {k: v for k, v in data.items() if k not in _REQUIRED}
        return cls(sha, str(data["bundle_name"]), float(data["tolerance_map_points"]), dict(data["mAP"]),
                   dict(data["rank1"]), details)

    def summary(self) -> str:
        """One line: the gallery bundle and the measured mAPs."""
        return (f"{self.bundle_name} (sha256 {self.bundle_sha256[:12]}...): asymmetric mAP "
                f"{self.mAP['asymmetric']:.2f}% vs {self.mAP['gallery_bundle']:.2f}% gallery-bundle/gallery-bundle "
                f"(tolerance {self.tolerance_map_points:g} points)")


@dataclass(frozen=True)
class GalleryBundle:
    """The bundle a gallery index was built with: ``sha256``, ``name``, and whether it is another bundle
    than the one embedding the queries (``asymmetric``)."""

    sha256: str
    name: str
    asymmetric: bool


def declared_compatibility(manifest: Manifest) -> tuple[Compatibility, ...]:
    """The measured compatibility declarations of the manifest (``parity["compatibility"]``; empty for most
    bundles). Raises BundleError if malformed."""
    entries = manifest.parity.get("compatibility", [])
    if not isinstance(entries, list):
        raise BundleError(f"bundle {manifest.name!r}: parity.compatibility must be a list, found "
                          f"{type(entries).__name__}; re-export the bundle")
    return tuple(Compatibility.from_dict(entry, f"bundle {manifest.name!r} parity.compatibility[{i}]")
                 for i, entry in enumerate(entries))


def gallery_bundle_for(manifest: Manifest, index_bundle_sha256: str | None, index_dir: str | Path) -> GalleryBundle:
    """Which bundle embedded the gallery at ``index_dir`` (recorded as ``index_bundle_sha256``), provided
    ``manifest``'s bundle may search it: the same bundle, or one it declares compatibility with.
    Raises IndexBundleMismatch saying what was found and how to fix it; BundleError for a bad declaration."""
    own = manifest.sha256()
    if index_bundle_sha256 == own:
        return GalleryBundle(own, manifest.name, asymmetric=False)
    declarations = {d.bundle_sha256: d for d in declared_compatibility(manifest)}
    if index_bundle_sha256 is not None and manifest.index_compatible(index_bundle_sha256):
        known = declarations.get(index_bundle_sha256)
        name = known.bundle_name if known is not None else f"bundle {index_bundle_sha256[:12]}"
        return GalleryBundle(index_bundle_sha256, name, asymmetric=True)
    listed = [declarations[sha].summary() if sha in declarations else f"sha256 {sha[:12]}..."
              for sha in manifest.compatible_with]
    declared = ("; it declares compatibility only with " + ", ".join(listed)
                if listed else "; it declares compatibility with no other bundle")
    raise IndexBundleMismatch(
        f"index {index_dir} was built with bundle sha256 {index_bundle_sha256}, but the bundle being served has "
        f"sha256 {own}; bundle {manifest.name!r} is neither that bundle nor declared compatible with it{declared}. "
        "Embeddings of "
        f"unrelated models cannot be compared; rebuild it with this bundle (cdd-index build --bundle BUNDLE "
        f"--images IMAGES --out {index_dir}) or, if this bundle was trained to be compatible with the "
        "index's bundle, re-export it with `cdd-export --compatible-with THAT_BUNDLE` (with --precision int8 for "
        "an int8 bundle of the same checkpoint)"
    )
