"""Client retries: gRPC's service-config retry policy in `RetrievalClient`, against real servers.

- A real gRPC server on loopback whose methods answer UNAVAILABLE to the first attempt of each call counts
  the attempts: the calls that are safe to send twice are sent twice and succeed, AddItems without upsert
  is sent once and fails, and ``RetryPolicy.off()`` sends everything once.
- A real `cdd-serve` process is killed (SIGKILL) while clients keep calling, and a new one started on the
  same port: every call of every client succeeds.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.client import RetrievalClient
from serving.index.__main__ import main as cdd_index
from serving.retry_policy import RETRIED_METHODS, RetryPolicy
from tests.serving.server_process import ServerProcess, free_port

QUERY = "0002_c2s1_000002_00.jpg"


class _FailsFirstAttempt(pb_grpc.RetrievalServicer):
    """Answers UNAVAILABLE unless gRPC marks the call as a retry (``grpc-previous-rpc-attempts``)."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _attempt(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.attempts[method] += 1
        if "grpc-previous-rpc-attempts" not in dict(context.invocation_metadata()):
            context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt refused by the test server")

    def Search(self, request, context):  # noqa: N802 (gRPC method names)
        self._attempt("Search", context)
        return pb.SearchResponse(items=[pb.Item(id="hit", score=1.0)])

    def SearchBatch(self, request, context):  # noqa: N802
        self._attempt("SearchBatch", context)
        return pb.SearchBatchResponse(results=[pb.SearchResponse() for _ in request.queries])

    def Embed(self, request, context):  # noqa: N802
        self._attempt("Embed", context)
        return pb.EmbedResponse(vector=[1.0, 0.0], dim=2)

    def AddItems(self, request, context):  # noqa: N802
        self._attempt("AddItems+upsert" if request.upsert else "AddItems", context)
        return pb.AddItemsResponse(added=len(request.items), count=len(request.items))

    def RemoveItems(self, request, context):  # noqa: N802
        self._attempt("RemoveItems", context)
        return pb.RemoveItemsResponse(removed=len(request.ids), count=0)

    def Stats(self, request, context):  # noqa: N802
        self._attempt("Stats", context)
        return pb.StatsResponse(count=7, dim=2)


@pytest.fixture
def flaky_server() -> Iterator[tuple[str, _FailsFirstAttempt]]:
    servicer = _FailsFirstAttempt()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RetrievalServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def _every_call(client: RetrievalClient) -> dict[str, Callable[[], object]]:
    vector = {"id": "v", "vector": [1.0, 0.0]}
    return {
        "Search": lambda: client.search(b"image", k=1),
        "SearchBatch": lambda: client.search_batch([b"a", b"b"], k=1),
        "Embed": lambda: client.embed(b"image"),
        "Stats": lambda: client.stats(),
        "RemoveItems": lambda: client.remove_items(["v"]),
        "AddItems+upsert": lambda: client.add_items([vector], upsert=True),
        "AddItems": lambda: client.add_items([vector]),
    }


def test_only_calls_safe_to_repeat_are_retried(flaky_server: tuple[str, _FailsFirstAttempt]) -> None:
    target, servicer = flaky_server
    with RetrievalClient(target, timeout=20) as client:
        calls = _every_call(client)
        assert calls["Search"]()[0].id == "hit" and calls["Stats"]()["count"] == 7
        assert calls["SearchBatch"]() == [[], []] and calls["Embed"]().tolist() == [1.0, 0.0]
        assert calls["RemoveItems"]() == 1 and calls["AddItems+upsert"]() == 1
        with pytest.raises(grpc.RpcError) as caught:
            calls["AddItems"]()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    retried = {*RETRIED_METHODS, "AddItems+upsert"}
    assert dict(servicer.attempts) == {method: 2 for method in retried} | {"AddItems": 1}


def test_retry_off_sends_every_call_once(flaky_server: tuple[str, _FailsFirstAttempt]) -> None:
    target, servicer = flaky_server
    with RetrievalClient(target, timeout=20, retry=RetryPolicy.off()) as client:
        for name, call in _every_call(client).items():
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name
    assert set(servicer.attempts.values()) == {1} and len(servicer.attempts) == 7


def test_service_config_names_the_policy() -> None:
    policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.5, max_backoff_s=3, multiplier=1.5)
    config = json.loads(dict(policy.channel_options(("Search",)))["grpc.service_config"])
    assert config == {"methodConfig": [{
        "name": [{"service": "cdd.v1.Retrieval", "method": "Search"}],
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.500s", "maxBackoff": "3.000s",
                        "backoffMultiplier": 1.5, "retryableStatusCodes": ["UNAVAILABLE"]},
    }]}
    with pytest.raises(ValueError, match="max_attempts: expected 1..5"):
        RetryPolicy(max_attempts=6)
    with pytest.raises(ValueError, match="initial_backoff_s <= max_backoff_s"):
        RetryPolicy(initial_backoff_s=2, max_backoff_s=1)


class _Caller(threading.Thread):
    """Calls ``calls`` round-robin until stopped; records every failure and when calls started/ended."""

    def __init__(self, name: str, client: RetrievalClient, calls: list[Callable[[], object]]) -> None:
        super().__init__(name=name, daemon=True)
        self.client, self.calls = client, calls
        self.failures: list[str] = []
        self.done = 0
        self.in_call = False
        self.started_after_kill = threading.Event()
        self.killed = threading.Event()
        self.stop = threading.Event()
        self.progress = threading.Condition()
        self.hold = threading.Event()  # set: stop between calls (held) until killed is set
        self.held = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            if self.hold.is_set() and not self.killed.is_set():
                self.held.set()
                self.killed.wait()
            with self.progress:
                self.in_call = True
                if self.killed.is_set():
                    self.started_after_kill.set()
                self.progress.notify_all()
            try:
                self.calls[i % len(self.calls)]()
            except grpc.RpcError as exc:
                self.failures.append(f"{self.name} call {i}: {exc.code().name}: {exc.details()}")
            except Exception as exc:  # a wrong answer is a failure too
                self.failures.append(f"{self.name} call {i}: {exc!r}")
            with self.progress:
                self.done += 1
                self.in_call = False
                self.progress.notify_all()
            i += 1

    def wait_touched_dead_server(self, done_at_kill: int, timeout: float = 120) -> None:
        """Until a call started after the kill, or the call in flight at the kill is still waiting."""
        with self.progress:
            touched = self.progress.wait_for(
                lambda: self.started_after_kill.is_set() or (self.in_call and self.done == done_at_kill), timeout
            )
            assert touched, f"{self.name} made no call to the dead server"

    def wait_done(self, count: int, timeout: float = 300) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: self.done >= count, timeout), f"{self.name} stalled"


def test_every_call_succeeds_across_a_server_restart(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    argv = ["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out", str(index), "--quiet"]
    assert cdd_index(argv) == 0
    port = free_port()
    server = ServerProcess(tiny_bundle, index, "--port", str(port))
    image = (gallery_images / QUERY).read_bytes()
    clients = [RetrievalClient(f"127.0.0.1:{port}", timeout=300) for _ in range(3)]
    vector = clients[0].embed(image)
    counter = iter(range(10**6))

    def add_then_remove() -> None:
        item_id = f"w{next(counter)}"
        assert clients[2].add_items([{"id": item_id, "vector": vector}], upsert=True) == 1
        assert clients[2].remove_items([item_id]) == 1

    def search() -> None:
        assert clients[0].search(image, k=1)[0].id == QUERY

    callers = [
        _Caller("search+embed", clients[0], [search, lambda: clients[0].embed(image)]),
        _Caller("batch+stats", clients[1], [lambda: clients[1].search_batch([image] * 3, k=2),
                                            lambda: clients[1].stats()]),
        _Caller("add+remove", clients[2], [add_then_remove]),
    ]
    try:
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.wait_done(3)
        # The writer is held between calls: a removal applied just before the kill, its reply lost, would
        # rightly answer NOT_FOUND when retried. The readers run on and may be cut off mid-call.
        callers[2].hold.set()
        assert callers[2].held.wait(120)
        server.kill()
        done_at_kill = []
        for caller in callers:
            with caller.progress:
                caller.killed.set()
                done_at_kill.append(caller.done)
        for caller, done in zip(callers, done_at_kill, strict=True):  # all call the dead server first
            caller.wait_touched_dead_server(done)
        server = ServerProcess(tiny_bundle, index, "--port", str(port))
        marks = [caller.done for caller in callers]
        for caller, mark in zip(callers, marks, strict=True):
            caller.wait_done(mark + 3)
    finally:
        for caller in callers:
            caller.stop.set()
        for caller in callers:
            caller.join(300)
        server.kill()
        for client in clients:
            client.close()
    assert [failure for caller in callers for failure in caller.failures] == []
    assert sum(caller.done for caller in callers) >= 18


def test_without_retries_the_restart_surfaces(tiny_bundle: Path, gallery_images: Path, tmp_path: Path) -> None:
    """The control for the test above: the same client with retries and waiting off fails at once."""
    index = tmp_path / "index"
    argv = ["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out", str(index), "--quiet"]
    assert cdd_index(argv) == 0
    server = ServerProcess(tiny_bundle, index)
    with RetrievalClient(server.address, timeout=60, retry=RetryPolicy.off()) as client:
        assert client.stats()["count"] == 20
        server.kill()
        with pytest.raises(grpc.RpcError) as caught:
            client.stats()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cdd_search_without_a_server(gallery_images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from serving.client import main as cdd_search

    image = str(gallery_images / QUERY)
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert cdd_search(["--target", target, image, "--fail-fast"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert cdd_search(["--target", target, image, "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "DEADLINE_EXCEEDED" in err and f"is cdd-serve running at {target}?" in err
    assert cdd_search(["--target", target, image, "--attempts", "9"]) == 2
    assert "max_attempts: expected 1..5" in capsys.readouterr().err
