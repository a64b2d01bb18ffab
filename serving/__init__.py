"""Serving: model bundles, inference engines, the gallery index and the gRPC search service.

Importing this package (or ``serving.bundle``, ``serving.preprocess``, ``serving.index``) never imports
torch, onnxruntime, tensorrt or faiss; each backend is imported when it is chosen.
"""

__all__: list[str] = []
