"""The newest-item-wins hand-over (tracker.live.mailbox): the one-slot Mailbox, and MailboxThread's
delivery, its one error rule (logged once per kind, counted, the worker goes on), repeating, and
close() (works off the item left, joins, leaves no thread behind)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from tracker.live.mailbox import LOGGED_KINDS, Mailbox, MailboxThread


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


class Recorder:
    """Work that records each item; ``hold`` makes the first call wait until ``release`` is set;
    items in ``failing`` raise ValueError(f"bad {item}") (``message`` overrides the text)."""

    def __init__(self, hold: bool = False, failing: set = frozenset(), message: str | None = None) -> None:
        self.items: list = []
        self.hold, self.failing, self.message = hold, set(failing), message
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, item) -> None:
        if self.hold and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
        if item in self.failing:
            raise ValueError(self.message or f"bad {item}")
        self.items.append(item)


@pytest.fixture
def no_thread_left():
    """Fails a test that leaves a thread running."""
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not left, left


# -- Mailbox ---------------------------------------------------------------------------------------
def test_mailbox_keeps_the_newest_and_counts() -> None:
    box: Mailbox[int] = Mailbox()
    assert box.take() is None
    for item in (1, 2, 3):
        box.put(item)
    assert box.take() == 3 and box.take() is None
    box.put(4)
    assert box.take() == 4
    assert (box.received, box.replaced) == (4, 2)


def test_a_closed_mailbox_ignores_new_items_but_keeps_the_one_left() -> None:
    box: Mailbox[str] = Mailbox()
    box.put("left")
    box.close()
    box.put("late")
    assert box.closed and box.received == 1
    assert box.wait() == "left" and box.wait() is None, "closed and empty: wait returns at once"


def test_wait_wakes_for_an_item_from_another_thread() -> None:
    box: Mailbox[int] = Mailbox()
    threading.Timer(0.05, box.put, (7,)).start()
    assert box.wait() == 7


# -- MailboxThread: delivery ---------------------------------------------------------------------------
def test_a_busy_worker_gets_only_the_newest_item(no_thread_left) -> None:
    work = Recorder(hold=True)
    worker = MailboxThread(work, "test")
    worker.put(0)
    assert work.entered.wait(5)  # item 0 is being worked off and held up
    start = time.perf_counter()
    for item in range(1, 6):
        worker.put(item)  # 1-4 replaced by newer ones, put never waits
    assert time.perf_counter() - start < 1.0, "put never waits for the busy worker (held for up to 10 s)"
    work.release.set()
    wait_for(lambda: work.items == [0, 5])
    assert worker.close()
    assert work.items == [0, 5]
    stats = worker.stats
    assert (stats.received, stats.replaced, stats.errors, stats.last_error) == (6, 4, 0, None)


def test_close_works_off_the_item_left_then_joins(no_thread_left) -> None:
    work = Recorder(hold=True)
    worker = MailboxThread(work, "test")
    worker.put("first")
    assert work.entered.wait(5)
    worker.put("last")
    threading.Timer(0.05, work.release.set).start()
    assert worker.close(timeout=5.0) is True
    assert work.items == ["first", "last"]
    worker.put("after close")  # ignored, not counted
    assert worker.close() is True  # idempotent
    assert work.items == ["first", "last"] and worker.stats.received == 2


def test_close_before_any_item_returns_at_once(no_thread_left) -> None:
    worker = MailboxThread(Recorder(), "test")
    start = time.perf_counter()
    assert worker.close()
    assert time.perf_counter() - start < 0.5


def test_close_gives_up_on_a_stuck_worker_after_its_timeout(caplog, no_thread_left) -> None:
    caplog.set_level(logging.WARNING, logger="tracker.live.mailbox")
    work = Recorder(hold=True)
    worker = MailboxThread(work, "stuck test")
    worker.put(1)
    assert work.entered.wait(5)
    start = time.perf_counter()
    assert worker.close(timeout=0.1) is False
    assert time.perf_counter() - start < 1.0, "close never hangs"
    assert any("stuck test" in r.getMessage() and "did not stop" in r.getMessage() for r in caplog.records)
    thread = next(t for t in threading.enumerate() if t.name == "stuck test")
    assert thread.daemon, "a stuck worker cannot keep the process alive"
    work.release.set()
    thread.join(5)  # let it end, for no_thread_left


# -- MailboxThread: the error rule -----------------------------------------------------------------
def test_a_failure_is_logged_once_counted_and_later_items_still_delivered(caplog, no_thread_left) -> None:
    caplog.set_level(logging.WARNING, logger="tracker.live.mailbox")
    work = Recorder(failing={1, 2, 3, 5}, message="device went away")
    worker = MailboxThread(work, "camera")
    for item in range(6):
        worker.put(item)
        wait_for(lambda done=item + 1: len(work.items) + worker.stats.errors == done)  # each item worked off before the next
    assert worker.close()
    assert work.items == [0, 4]
    stats = worker.stats
    assert (stats.received, stats.replaced, stats.errors) == (6, 0, 4)
    assert stats.last_error == "ValueError: device went away"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["camera: ValueError: device went away; it goes on (the same error again is only counted)"]


def test_each_kind_of_failure_is_logged_once_up_to_a_limit(caplog, no_thread_left) -> None:
    caplog.set_level(logging.WARNING, logger="tracker.live.mailbox")
    kinds = LOGGED_KINDS + 3
    work = Recorder(failing=set(range(kinds)))  # a different message for every item
    worker = MailboxThread(work, "test")
    for item in [*range(kinds), 0, 1]:  # 0 and 1 fail again, as before
        worker.put(item)
        wait_for(lambda: worker.stats.errors + worker.stats.replaced == worker.stats.received)
    assert worker.close()
    assert worker.stats.errors == kinds + 2
    logged = [r.getMessage().split(";")[0] for r in caplog.records]
    assert logged == [f"test: ValueError: bad {item}" for item in range(LOGGED_KINDS)]


def test_an_exception_never_reaches_the_thread_that_puts(no_thread_left) -> None:
    def explode(item) -> None:
        raise RuntimeError("boom")

    worker = MailboxThread(explode, "test")
    for item in range(20):
        worker.put(item)  # never raises
    assert worker.close()
    assert worker.stats.errors + worker.stats.replaced == 20 and worker.stats.errors >= 1


# -- MailboxThread: repeating ----------------------------------------------------------------------
def test_a_repeating_worker_works_the_last_item_again_until_a_newer_comes(no_thread_left) -> None:
    items: list[str] = []

    def paced(item: str) -> None:
        items.append(item)
        time.sleep(0.005)

    worker = MailboxThread(paced, "test", repeat=True)
    time.sleep(0.05)
    assert items == [], "nothing before the first item"
    worker.put("a")
    wait_for(lambda: items.count("a") >= 3)
    worker.put("b")
    wait_for(lambda: items.count("b") >= 3)
    assert worker.close()
    count = len(items)
    time.sleep(0.05)
    assert len(items) == count, "nothing after close"
    first_b = items.index("b")
    assert set(items[:first_b]) == {"a"} and set(items[first_b:]) == {"b"}


def test_a_repeating_worker_does_not_repeat_a_failed_item(no_thread_left) -> None:
    work = Recorder(failing={"bad"})
    worker = MailboxThread(work, "test", repeat=True)
    worker.put("bad")
    wait_for(lambda: worker.stats.errors == 1)
    time.sleep(0.05)
    assert worker.stats.errors == 1 and work.items == [], "waits for a new item, not retrying the failed one"
    worker.put("good")
    wait_for(lambda: len(work.items) >= 3)
    assert worker.close()
    assert set(work.items) == {"good"}
