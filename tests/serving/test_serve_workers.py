"""`cdd-serve --workers N` with real processes: a change acknowledged through one worker's port is seen by
the very next Search on another worker's port; acknowledged changes survive SIGKILL of a worker (it is
restarted and replays the shared log) and of the whole server; the parent folds the log at shutdown."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from PIL import Image

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.client import RetrievalClient
from serving.index.__main__ import main as cdd_index
from serving.index.gallery import GalleryIndex
from serving.worker_pool import core_count
from tests.serving.server_process import ROOT


def _snapshot_has(index: Path, item_id: str) -> tuple[int, bool]:
    """(items, whether ``item_id`` is one) of the folder's live snapshot alone (no log)."""
    snapshot = GalleryIndex.load(index)
    return len(snapshot), item_id in snapshot

_SERVING = re.compile(r"serving cdd\.v1\.Retrieval on 127\.0\.0\.1:(\d+) \(pid (\d+),")
_WORKER = re.compile(r"worker (\d+): pid (\d+)")
_ENGINE_THREADS = re.compile(r"serving cdd\.v1\.Retrieval on .* engine threads (\d+),")


class Workers:
    """``cdd-serve --workers 2 --port 0``; reads each worker's pid and port from the shared log stream."""

    def __init__(self, bundle: Path, index: Path, workers: int = 2, extra: tuple[str, ...] = ()) -> None:
        command = [sys.executable, "-m", "serving.server", "--bundle", str(bundle), "--index", str(index),
                   "--port", "0", "--backend", "onnxruntime-cpu", "--workers", str(workers), *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.pids: dict[int, int] = {}  # worker number -> pid
        self.ports: dict[int, int] = {}  # pid -> port
        self.wait_for(workers)

    def wait_for(self, serving: int) -> None:
        """Read the log until ``serving`` workers reported their ports."""
        deadline = time.monotonic() + 120
        while len(self.ports) < serving and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.log.append(line)
            if found := _WORKER.search(line):
                self.pids[int(found.group(1))] = int(found.group(2))
            if found := _SERVING.search(line):
                self.ports[int(found.group(2))] = int(found.group(1))
        assert len(self.ports) >= serving, "workers did not start:\n" + "".join(self.log)

    def address(self, worker: int) -> str:
        return f"127.0.0.1:{self.ports[self.pids[worker]]}"


def _allowed_cores(pid: int) -> set[int]:
    """The cores /proc says process ``pid`` may run on (its Cpus_allowed_list, e.g. "0-1,3")."""
    text = re.search(r"^Cpus_allowed_list:\s*(\S+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1)
    cores: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def _expected_halves() -> list[set[int]]:
    """Two workers under --cpu-affinity auto: the first half of this process's cores, then the rest (the
    later group takes an odd core); with one core neither is pinned."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return [set(cores), set(cores)]
    return [set(cores[: len(cores) // 2]), set(cores[len(cores) // 2 :])]


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "(zombie)" not in Path(f"/proc/{pid}/status").read_text()


def _stub(address: str) -> tuple[grpc.Channel, pb_grpc.RetrievalStub]:
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.RetrievalStub(channel)


def _png(synthetic: object, pid: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic.image(pid, 0)).save(buffer, format="PNG")  # an identity not in the gallery
    return buffer.getvalue()


def _add(stub: pb_grpc.RetrievalStub, item_id: str, image: bytes) -> int:
    vector = stub.Embed(pb.EmbedRequest(image=image), timeout=30).vector
    item = pb.NewItem(id=item_id, vector=pb.Vector(values=vector), metadata={"via": "rpc"})
    return stub.AddItems(pb.AddItemsRequest(items=[item]), timeout=30).count


def _requests(address: str) -> int:
    """Embedding requests the worker at ``address`` has batched (one per Search)."""
    channel, stub = _stub(address)
    with channel:
        return stub.Stats(pb.StatsRequest(), timeout=30).batching.requests


def _built_index(bundle: Path, images: Path, tmp_path: Path) -> Path:
    index = tmp_path / "index"
    assert cdd_index(["build", "--bundle", str(bundle), "--images", str(images), "--out", str(index), "--quiet"]) == 0
    return index


def _top(stub: pb_grpc.RetrievalStub, image: bytes) -> tuple[str, int]:
    top = stub.Search(pb.SearchRequest(image=image, k=1), timeout=30).items[0].id
    return top, stub.Stats(pb.StatsRequest(), timeout=30).count


def test_a_change_acknowledged_on_one_worker_is_seen_by_the_next_search_on_another(
    tiny_bundle: Path, gallery_images: Path, synthetic: object, tmp_path: Path
) -> None:
    index = _built_index(tiny_bundle, gallery_images, tmp_path)
    before = synthetic.gallery_ids * synthetic.gallery_per_id
    first, second = _png(synthetic, 77), _png(synthetic, 78)
    server = Workers(tiny_bundle, index)
    try:
        channel_a, a = _stub(server.address(0))
        channel_b, b = _stub(server.address(1))
        assert server.address(0) != server.address(1)
        # --engine-threads not given: each of the 2 workers runs its share of the cores, not one per core each
        share = str(max(1, core_count() // 2))
        assert _ENGINE_THREADS.findall("".join(server.log)) == [share, share], "".join(server.log)
        # --cpu-affinity auto (the default): each worker keeps to its own half of the cores
        assert [_allowed_cores(server.pids[i]) for i in (0, 1)] == _expected_halves()
        assert _add(a, "first", first) == before + 1
        assert _top(b, first) == ("first", before + 1)  # B had not seen it before this Search
        removed = b.RemoveItems(pb.RemoveItemsRequest(ids=["first"]), timeout=30)
        assert removed.removed == 1 and removed.count == before
        with pytest.raises(grpc.RpcError) as caught:  # A's check, its first call since, sees B's removal
            a.RemoveItems(pb.RemoveItemsRequest(ids=["first"]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert _top(a, first)[0] != "first" and _top(a, first)[1] == before
        assert _add(a, "second", second) == before + 1
        channel_a.close()
        channel_b.close()
        requests_before = [_requests(server.address(i)) for i in (0, 1)]
        with RetrievalClient(f"{server.address(0)},{server.address(1)}") as client:  # round-robin over both
            for _ in range(20):
                client.search(first, k=1)
        spread = [_requests(server.address(i)) - requests_before[i] for i in (0, 1)]
        # both got calls (a channel to the first address only would give [20, 0]); not exactly 10 each, since
        # calls go to the addresses already connected while the other connection is still being made
        assert sum(spread) == 20 and min(spread) > 0, spread

        killed = server.pids[1]
        os.kill(killed, signal.SIGKILL)  # worker B dies; the parent starts a new one on a new free port
        deadline = time.monotonic() + 60
        while server.pids[1] == killed and time.monotonic() < deadline:
            server.wait_for(len(server.ports) + 1)
        channel_b, b = _stub(server.address(1))
        assert _top(b, second) == ("second", before + 1)  # replayed from the shared log
        assert _allowed_cores(server.pids[1]) == _expected_halves()[1]  # the same cores as the worker it replaced
        channel_b.close()
    finally:
        children = list(server.pids.values())
        server.process.send_signal(signal.SIGKILL)  # the whole server: the workers die with it
        server.process.wait(10)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    single = Workers(tiny_bundle, index, workers=1)
    try:
        channel, stub = _stub(f"127.0.0.1:{next(iter(single.ports.values()))}")
        assert _top(stub, second) == ("second", before + 1)
        assert _top(stub, first)[0] != "first"
        channel.close()
    finally:
        single.process.send_signal(signal.SIGTERM)
        assert single.process.wait(30) == 0


def test_sigterm_drains_every_worker_and_the_parent_folds_the_log(
    tiny_bundle: Path, gallery_images: Path, synthetic: object, tmp_path: Path
) -> None:
    index = _built_index(tiny_bundle, gallery_images, tmp_path)
    image = _png(synthetic, 77)
    server = Workers(tiny_bundle, index, extra=("--cpu-affinity", "off"))
    try:
        # --cpu-affinity off: every worker may run on every core this process may
        assert [_allowed_cores(server.pids[i]) for i in (0, 1)] == [set(os.sched_getaffinity(0))] * 2
        assert "cores any" in "".join(server.log)
        channel, stub = _stub(server.address(1))
        _add(stub, "kept", image)
        channel.close()
    finally:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
    assert not any(_alive(pid) for pid in server.pids.values())
    logs = [p for p in index.glob("journal-*.log") if p.stat().st_size > 0]
    assert logs == []  # folded into a new snapshot by the parent once every worker had stopped
    assert _snapshot_has(index, "kept") == (synthetic.gallery_ids * synthetic.gallery_per_id + 1, True)
