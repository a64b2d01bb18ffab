"""CPU time of the two steps this change touched, in one process, on the serve benchmark's own inputs.

Usage: ``PYTHONPATH=CHECKOUT python docs/serve-hits/component_cost.py GALLERY LABEL OUT.json`` (run it once
with main's checkout and once with this branch's; GALLERY from the serve benchmark's ``random_gallery``).

- search + reply: the gallery search of a batch of Q queries (k = 10, no filter) and the SearchResponse
  bytes of every query, as the Search handler gets them (main: ``search_response(index.search(...))``;
  this branch: ``index.search(..., columns=True)`` and ``FoundItems.reply``), per query;
- model input: ``image_to_model_input`` of the benchmark's 64 query JPEGs (the demo bundle's input size),
  per image.

``time.process_time`` over many repetitions (FAISS's OpenMP at 1 thread, as the batch worker sets it).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

import serving
from serving.benchmarks.serve import query_jpegs
from serving.bundle import load_bundle
from serving.index.gallery import GalleryIndex
from serving.preprocess import image_to_model_input
from serving.response_wire import search_response

REPEATS = 400


def _cpu_us(work, repeats: int = REPEATS) -> float:
    work()
    start = time.process_time()
    for _ in range(repeats):
        work()
    return (time.process_time() - start) / repeats * 1e6


def main(gallery: str, label: str, out: str) -> None:
    faiss.omp_set_num_threads(1)
    index = GalleryIndex.load(gallery)
    columns = "columns" in inspect.signature(GalleryIndex.search).parameters
    rng = np.random.default_rng(0)
    result = {"label": label, "code": str(Path(serving.__file__).parent), "columns_api": columns,
              "load_average_start": os.getloadavg()[0], "search_and_reply_us_per_query": {}}
    for q in (1, 8, 16):
        queries = rng.normal(size=(q, index.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        if columns:
            def work(queries=queries):
                return [found.reply() for found in index.search(queries, 10, columns=True)]
        else:
            def work(queries=queries):
                return [search_response(hits) for hits in index.search(queries, 10)]
        result["search_and_reply_us_per_query"][str(q)] = _cpu_us(work) / q
    manifest = load_bundle("bundles/demo")
    payloads = query_jpegs(manifest, 64, 0)
    result["model_input_us_per_image"] = _cpu_us(
        lambda: [image_to_model_input(p, manifest) for p in payloads], REPEATS // 8) / len(payloads)
    result["load_average_end"] = os.getloadavg()[0]
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])
