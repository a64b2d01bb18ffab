"""Benchmarks behind ``cdd-bench`` (`__main__`, also ``python -m serving.benchmarks``): one module per measured thing.

- `latency`: timing loop and percentiles.
- `machine`: what the numbers were measured on (CPU, cores, RAM, OS, library versions).
- `engine`: images/s and latency per bundle x backend x batch size; student / teacher ratios.
- `serve`: a real gRPC server (or a remote one) under N concurrent clients, with and without batching.
- `index`: gallery ingestion throughput, and search latency / recall per index type and gallery size.
- `search_cost`: CPU per request of each step the batch worker runs for a Search (decode, engine, search,
  reply), on one thread.
- `targets`: the project's performance targets, evaluated as met / not met.
- `plots`, `report`: PNG plots, markdown, JSON (atomic writes).
- `suite`: run one benchmark (or the CPU suite behind ``cdd-bench all``) and write its files.

Importing this package imports neither torch, onnxruntime nor faiss.
"""

__all__: list[str] = []
