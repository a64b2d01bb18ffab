"""Data layer: dataset listers, records, transforms, samplers and dataset generators.

Module map (import the module you need; this package imports nothing so that the stdlib-only
modules stay importable without torch):
- records: Record, DatasetSplits, train_labels (stdlib only)
- layouts: load_dataset(name, root) for market1501, dukemtmc, msmt17, veri776, vehicleid, folder
  (stdlib only)
- transforms: load_rgb (the decoding rule of cdd_common/image_decoding.py, shared with serving),
  resize_uint8, normalize_uint8, eval / train transforms, ImageLoadError
- samplers: IdentityBalancedBatchSampler (P identities x K images, data-parallel aware)
- dataset: ImageDataset (on_error="raise" | "skip"), verify_images
- synthetic: deterministic synthetic re-ID set in the Market-1501 layout + raw-pixel baseline
- animal_mnist: the Animal-MNIST unseen-class retrieval benchmark written as class folders
"""

__all__: list[str] = []
