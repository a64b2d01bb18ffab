"""DynamicBatcher: rows go back to their own callers, batches form under concurrency, deadlines drop work."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batcher import DynamicBatcher
from serving.errors import DeadlineExceeded, InvalidInput, Unavailable


class _RecordingEmbed:
    """A known-answer embedding: row i = the first 4 pixels of image i as floats; records batch sizes."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.sizes: list[int] = []
        self.seen: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        self.sizes.append(images.shape[0])
        self.seen.extend(int(v) for v in images[:, 0, 0, 0])
        if self.delay_s:
            time.sleep(self.delay_s)
        return images.reshape(images.shape[0], -1)[:, :4].astype(np.float32)


def _image(value: int, n: int = 1) -> np.ndarray:
    """n images of 2x2x3 whose pixels encode ``value`` (and the row within the request)."""
    out = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    for row in range(n):
        out[row] = (value + row) % 256
    return out


def test_concurrent_callers_get_their_own_rows_in_shared_batches() -> None:
    embed = _RecordingEmbed()
    # a window that never closes by time: a batch runs when it is full, however slowly the callers arrive
    with DynamicBatcher(embed, max_batch=8, max_wait_ms=3_600_000) as batcher:
        with ThreadPoolExecutor(max_workers=48) as pool:
            results = list(pool.map(lambda v: (v, batcher.run(_image(v))), range(48)))
        stats = batcher.stats()
    for value, rows in results:
        np.testing.assert_array_equal(rows, np.full((1, 4), value, dtype=np.float32))
    assert embed.sizes == [8] * 6 and sorted(embed.seen) == list(range(48))
    assert stats.images == 48 and stats.requests == 48 and stats.batches == 6
    assert stats.largest_batch == 8 and stats.mean_batch_size == 8.0
    assert stats.enabled and stats.expired == 0


def test_disabled_batcher_runs_every_request_alone() -> None:
    embed = _RecordingEmbed(delay_s=0.005)
    with DynamicBatcher(embed, max_batch=8, max_wait_ms=20, enabled=False) as batcher:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda v: batcher.run(_image(v)), range(16)))
        stats = batcher.stats()
    assert [int(r[0, 0]) for r in results] == list(range(16))
    assert embed.sizes == [1] * 16
    assert not stats.enabled and stats.mean_batch_size == 1.0 and stats.largest_batch == 1


def test_max_batch_one_means_disabled() -> None:
    with DynamicBatcher(_RecordingEmbed(), max_batch=1) as batcher:
        assert not batcher.enabled


def test_multi_image_requests_are_kept_whole_and_oversized_ones_chunked() -> None:
    embed = _RecordingEmbed()
    with DynamicBatcher(embed, max_batch=4, max_wait_ms=5) as batcher:
        rows = batcher.run(_image(10, n=10))
        np.testing.assert_array_equal(rows[:, 0], np.arange(10, 20, dtype=np.float32))
        assert embed.sizes == [4, 4, 2]
        embed.sizes.clear()
        with ThreadPoolExecutor(max_workers=3) as pool:
            parts = list(pool.map(lambda v: batcher.run(_image(v, n=3)), [0, 100, 200]))
    for value, part in zip([0, 100, 200], parts, strict=True):
        np.testing.assert_array_equal(part[:, 0], np.arange(value, value + 3, dtype=np.float32))
    assert all(size in (3,) for size in embed.sizes)  # two 3-image requests never share a 4-image batch


def test_expired_deadline_fails_before_queueing() -> None:
    embed = _RecordingEmbed()
    with DynamicBatcher(embed) as batcher:
        with pytest.raises(DeadlineExceeded, match="already passed"):
            batcher.run(_image(1), deadline=time.monotonic() - 0.01)
        assert batcher.stats().requests == 0
    assert embed.sizes == []


def test_deadline_passing_while_batcher_waits_drops_the_request() -> None:
    embed = _RecordingEmbed()
    with DynamicBatcher(embed, max_batch=8, max_wait_ms=3_600_000) as batcher:  # the window never closes by time
        with pytest.raises(DeadlineExceeded, match="waiting for the batcher"):
            batcher.run(_image(7), deadline=time.monotonic() + 1.0)  # returns: it did not sit out the window
        assert embed.seen == [] and batcher.stats().expired == 0  # still queued: the window is open
        filler = batcher.submit(_image(100, n=7))  # the 8th image closes the batch
        np.testing.assert_array_equal(filler.result(30)[:, 0], np.arange(100, 107, dtype=np.float32))
        stats = batcher.stats()
        assert stats.expired == 1 and stats.requests == 1
        assert embed.seen == list(range(100, 107))  # the engine never ran the dropped image


def test_request_expiring_behind_a_slow_batch_is_dropped_by_the_worker() -> None:
    embed = _RecordingEmbed()
    embed.gate.clear()
    with DynamicBatcher(embed, max_batch=1) as batcher:
        first = batcher.submit(_image(1))
        late = batcher.submit(_image(2), deadline=time.monotonic() + 0.02)
        time.sleep(0.05)
        embed.gate.set()
        assert first.result(5)[0, 0] == 1
        with pytest.raises(DeadlineExceeded, match="while the request was queued"):
            late.result(5)
        assert batcher.stats().expired == 1
    assert embed.seen == [1]


def test_engine_error_reaches_callers_and_worker_survives() -> None:
    calls = {"n": 0}

    def flaky(images: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("engine exploded")
        return np.ones((images.shape[0], 2), dtype=np.float32)

    with DynamicBatcher(flaky, max_batch=4, max_wait_ms=1) as batcher:
        with pytest.raises(RuntimeError, match="engine exploded"):
            batcher.run(_image(0))
        assert batcher.run(_image(0)).shape == (1, 2)


def test_engine_returning_wrong_row_count_is_an_error() -> None:
    with DynamicBatcher(lambda images: np.ones((1, 2), np.float32), max_batch=4) as batcher:
        with pytest.raises(RuntimeError, match="expected \\(N, D\\)"):
            batcher.run(_image(0, n=3))


def test_close_finishes_queued_work_then_refuses_new_work() -> None:
    embed = _RecordingEmbed()
    embed.gate.clear()
    batcher = DynamicBatcher(embed, max_batch=2, max_wait_ms=1)
    futures = [batcher.submit(_image(v)) for v in range(5)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    embed.gate.set()
    closer.join(5)
    assert not closer.is_alive()
    assert [int(f.result(0)[0, 0]) for f in futures] == list(range(5))
    with pytest.raises(Unavailable, match="shutting down"):
        batcher.submit(_image(9))
    batcher.close()  # idempotent


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        DynamicBatcher(_RecordingEmbed(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        DynamicBatcher(_RecordingEmbed(), max_wait_ms=-1)
    with DynamicBatcher(_RecordingEmbed()) as batcher:
        with pytest.raises(InvalidInput, match="non-empty"):
            batcher.submit(np.zeros((0, 2, 2, 3), np.uint8))
        with pytest.raises(InvalidInput, match="non-empty"):
            batcher.submit(np.zeros((2, 2, 3), np.uint8))
