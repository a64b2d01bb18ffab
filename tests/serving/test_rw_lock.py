"""`ReadWriteLock`: searches (readers) overlap, a change (writer) waits for them and excludes them."""

from __future__ import annotations

import threading

from serving.index.rw_lock import ReadWriteLock


def test_readers_overlap_and_a_writer_waits_for_them() -> None:
    lock = ReadWriteLock()
    second_reader_in = threading.Event()
    writer_in = threading.Event()

    def reader() -> None:
        with lock.read():
            second_reader_in.set()

    def writer() -> None:
        with lock.write():
            writer_in.set()

    with lock.read():
        other = threading.Thread(target=reader)
        other.start()
        assert second_reader_in.wait(5)  # a second search does not wait for the first
        other.join(5)
        changer = threading.Thread(target=writer)
        changer.start()
        assert not writer_in.wait(0.3)  # the change waits while a search holds the lock
    assert writer_in.wait(5)
    changer.join(5)


def test_a_waiting_writer_goes_before_new_readers() -> None:
    lock = ReadWriteLock()
    order: list[str] = []
    with lock.read():
        changer = threading.Thread(target=lambda: _hold(lock.write(), order, "write"))
        changer.start()
        while not lock._waiting_writers:  # the writer is queued behind the held read lock
            threading.Event().wait(0.01)
        late = threading.Thread(target=lambda: _hold(lock.read(), order, "read"))
        late.start()
        threading.Event().wait(0.2)
        assert order == []
    changer.join(5)
    late.join(5)
    assert order == ["write", "read"]


def _hold(context, order: list[str], name: str) -> None:
    with context:
        order.append(name)
