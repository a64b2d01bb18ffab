"""The load generator: Search callers in separate processes, so the server under test has its own CPU.

Each process runs `grpc.aio` callers (cheaper per call than a thread per caller) on its own channels.
Closed loop (``rate`` None): ``clients`` callers, each sending its next call when the last one answered.
Open loop (``rate`` requests/s): calls start on a fixed schedule whatever the server does, at most
``clients`` outstanding (beyond that a scheduled call is counted as GENERATOR_DROPPED); latency counts from
the scheduled start, so a late generator cannot hide queueing (no coordinated omission).

The generator's own CPU seconds are measured in each process (`time.process_time`) and reported as a
share of the machine, so a reader can see whether the generator, not the server, was the limit.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import grpc

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.benchmarks.latency import percentiles_ms

__all__ = ["LoadSpec", "run_load"]

_START_MARGIN_S = 0.2


@dataclass(frozen=True)
class LoadSpec:
    """``clients`` callers (closed loop) or the outstanding-call cap (open loop at ``rate``/s) against
    ``target`` (HOST:PORT, or several comma-separated: channels take them in turn) for ``seconds``, spread
    over ``processes`` processes; Search top-``k``, ``timeout`` s per call."""

    target: str
    clients: int
    seconds: float
    k: int = 10
    timeout: float = 30.0
    rate: float | None = None
    processes: int = 1

    def __post_init__(self) -> None:
        if self.clients < 1 or self.processes < 1 or self.seconds <= 0:
            raise ValueError(f"load: clients and processes must be >= 1 and seconds > 0, got {self}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"load: rate must be > 0 requests/s, got {self.rate}")


def _split(spec: LoadSpec) -> list[LoadSpec]:
    processes = min(spec.processes, spec.clients)
    shares = [spec.clients // processes + (1 if i < spec.clients % processes else 0) for i in range(processes)]
    rate = None if spec.rate is None else spec.rate / processes
    return [replace(spec, clients=share, rate=rate, processes=1) for share in shares]


async def _call(stub: Any, request: pb.SearchRequest, timeout: float, codes: Counter) -> bool:
    try:
        await stub.Search(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        codes[exc.code().name] += 1
        return False
    codes["OK"] += 1
    return True


async def _closed_loop(stubs: list[Any], requests: list[pb.SearchRequest], spec: LoadSpec, end: float,
                       codes: Counter, latencies: list[float]) -> None:
    async def caller(i: int) -> None:
        j = i * 7
        while time.time() < end:
            tick = time.perf_counter()
            if await _call(stubs[i], requests[j % len(requests)], spec.timeout, codes):
                latencies.append(time.perf_counter() - tick)
            j += 1

    await asyncio.gather(*(caller(i) for i in range(len(stubs))))


async def _open_loop(stubs: list[Any], requests: list[pb.SearchRequest], spec: LoadSpec, end: float,
                     codes: Counter, latencies: list[float]) -> None:
    assert spec.rate is not None
    interval, pending = 1.0 / spec.rate, set()
    scheduled, j = time.perf_counter(), 0

    async def one(request: pb.SearchRequest, stub: Any, start: float) -> None:
        if await _call(stub, request, spec.timeout, codes):
            latencies.append(time.perf_counter() - start)

    while time.time() < end:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= spec.clients:
            codes["GENERATOR_DROPPED"] += 1
        else:
            task = asyncio.ensure_future(one(requests[j % len(requests)], stubs[j % len(stubs)], scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)
        scheduled += interval
        j += 1
    await asyncio.gather(*pending)


async def _worker_async(spec: LoadSpec, payloads: Sequence[bytes], conn: Any) -> None:
    requests = [pb.SearchRequest(image=p, k=spec.k) for p in payloads]
    targets = spec.target.split(",")  # several servers (one per worker process): channels round-robin over them
    count = max(min(spec.clients, 16), len(targets))
    channels = [grpc.aio.insecure_channel(targets[i % len(targets)]) for i in range(count)]
    stubs = [pb_grpc.RetrievalStub(channels[i % len(channels)]) for i in range(spec.clients)]
    warmup: Counter = Counter()
    await asyncio.gather(*(_call(stub, requests[0], spec.timeout, warmup) for stub in stubs))
    conn.send(("ready", dict(warmup)))
    start = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await asyncio.sleep(max(0.0, start - time.time()))
    cpu = time.process_time()
    codes: Counter = Counter()
    latencies: list[float] = []
    loop = _closed_loop if spec.rate is None else _open_loop
    await loop(stubs, requests, spec, start + spec.seconds, codes, latencies)
    finished = time.time()
    for channel in channels:
        await channel.close()
    conn.send(("done", {"codes": dict(codes), "latencies": latencies, "cpu_s": time.process_time() - cpu,
                        "seconds": finished - start, "warmup": dict(warmup)}))


def _worker(spec: LoadSpec, payloads: Sequence[bytes], conn: Any) -> None:
    try:
        asyncio.run(_worker_async(spec, payloads, conn))
    except Exception as exc:  # reported to the parent, which raises with it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _receive(conn: Any, expected: str, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"the load generator sent no {expected!r} within {timeout:.0f} s")
    kind, payload = conn.recv()
    if kind != expected:
        raise RuntimeError(f"the load generator failed: {payload}")
    return payload


def run_load(
    spec: LoadSpec,
    payloads: Sequence[bytes],
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the load; ``on_start`` / ``on_end`` are called right before the timed window opens and right
    after every process finished (to read server counters). Returns {"spec", "requests" (successful),
    "codes" {status: n}, "qps", "seconds", "latency" (`percentiles_ms`, None without successes),
    "generator_cpu_s", "generator_cpu_share" (of all cores), "warmup_codes"}. Raises RuntimeError when a
    generator process fails or stalls."""
    context = multiprocessing.get_context("spawn")
    parts = _split(spec)
    pipes = [context.Pipe() for _ in parts]
    processes = [context.Process(target=_worker, args=(part, list(payloads), child), daemon=True)
                 for part, (_, child) in zip(parts, pipes, strict=True)]
    for process in processes:
        process.start()
    try:
        warmups = [_receive(parent, "ready", spec.timeout + 120) for parent, _ in pipes]
        if on_start is not None:
            on_start()
        start = time.time() + _START_MARGIN_S
        for parent, _ in pipes:
            parent.send(start)
        results = [_receive(parent, "done", spec.seconds + spec.timeout + 60) for parent, _ in pipes]
        if on_end is not None:
            on_end()
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    return _summary(spec, results, warmups)


def _summary(spec: LoadSpec, results: list[dict[str, Any]], warmups: list[dict[str, int]]) -> dict[str, Any]:
    codes: Counter = Counter()
    warm: Counter = Counter()
    for result, warmup in zip(results, warmups, strict=True):
        codes.update(result["codes"])
        warm.update(warmup)
    latencies = [value for result in results for value in result["latencies"]]
    seconds = max(result["seconds"] for result in results)
    cpu = sum(result["cpu_s"] for result in results)
    return {
        "spec": asdict(spec),
        "requests": len(latencies),
        "codes": dict(codes),
        "qps": len(latencies) / seconds,
        "seconds": seconds,
        "latency": percentiles_ms(latencies) if latencies else None,
        "generator_cpu_s": cpu,
        "generator_cpu_share": cpu / (seconds * (os.cpu_count() or 1)),
        "warmup_codes": dict(warm),
    }
