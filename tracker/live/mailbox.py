"""Newest-item-wins hand-over between threads: a one-slot ``Mailbox`` and a ``MailboxThread`` that
works off the newest item of one in its own daemon thread.

A pipeline sink that must not make the pipeline wait (a network stream, a virtual camera, the
viewer's display) leaves each result in a mailbox in O(1) and never blocks; a result left before
the previous one was taken replaces it (counted as ``replaced``).

Errors (one rule for every worker): an exception raised by the work is counted (``errors``,
``last_error`` "Type: message") and logged as a warning the first time that type and message is
seen (later identical ones are only counted); the worker drops that item and goes on with the
next one put. Nothing is raised to the thread that puts, so a sink's failing output never stops
the tracking; the owner reports the count (e.g. when it closes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

LOGGED_KINDS = 10  # distinct failures (type and message) logged per worker; the rest are only counted


class Mailbox(Generic[T]):
    """One slot holding the newest item not taken yet (any value but None). Thread-safe; ``put``
    and ``take`` never wait. ``received``: items put; ``replaced``: items overwritten before they
    were taken. After ``close()`` items put are ignored (not counted)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.received = self.replaced = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> None:
        """Leave ``item`` as the newest, replacing one not taken yet."""
        with self._cond:
            if self._closed:
                return
            if self._item is not None:
                self.replaced += 1
            self._item = item
            self.received += 1
            self._cond.notify()

    def take(self) -> T | None:
        """The newest item not taken yet, or None."""
        with self._cond:
            item, self._item = self._item, None
        return item

    def wait(self) -> T | None:
        """The newest item, waiting until one is put; None once closed with nothing left to take."""
        with self._cond:
            while self._item is None and not self._closed:
                self._cond.wait()
            item, self._item = self._item, None
        return item

    def close(self) -> None:
        """Ignore later items and wake a ``wait``; an item not taken yet stays to be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass(frozen=True)
class MailboxStats:
    """What a ``MailboxThread`` did so far: items put, items replaced before the worker took them,
    items whose work raised, and the last such error ("Type: message")."""

    received: int = 0
    replaced: int = 0
    errors: int = 0
    last_error: str | None = None


class MailboxThread(Generic[T]):
    """Calls ``work(item)`` in a daemon thread for the newest item ``put`` (module docstring for
    errors); items put while ``work`` runs replace each other, the newest is worked off next.

    name    names the thread and starts the log lines, e.g. "VMC to 127.0.0.1:39539"
    repeat  when no newer item has come, call ``work`` with the last item again at once (``work``
            paces itself, e.g. a camera that sends at its frame rate); an item whose work raised
            is not repeated. Off: the worker waits for the next item.

    ``close(timeout)`` takes no new items, works off the item still in the mailbox (one put and
    not taken yet; a repeated item is not repeated again), then joins the thread for up to
    ``timeout`` seconds, with a warning if it has not ended (a daemon: it ends with the process).
    """

    def __init__(self, work: Callable[[T], object], name: str, repeat: bool = False) -> None:
        self.name, self.repeat = name, repeat
        self._work = work
        self._mailbox: Mailbox[T] = Mailbox()
        self._lock = threading.Lock()  # guards the error counts
        self._errors = 0
        self._last_error: str | None = None
        self._logged: set[str] = set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def stats(self) -> MailboxStats:
        with self._lock:
            return MailboxStats(self._mailbox.received, self._mailbox.replaced, self._errors, self._last_error)

    def put(self, item: T) -> None:
        """Leave ``item`` for the worker (O(1), never waits); ignored after ``close()``."""
        self._mailbox.put(item)

    def close(self, timeout: float = 5.0) -> bool:
        """Work off the item left, end the thread (module docstring); True when it has ended. Idempotent."""
        self._mailbox.close()
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            log.warning("%s: the worker did not stop within %g s", self.name, timeout)
            return False
        return True

    def _next(self, last: T | None) -> T | None:
        """The item to work off next: a new one, else ``last`` to repeat; None to end."""
        if last is None:
            return self._mailbox.wait()
        closed = self._mailbox.closed  # read before take(): an item put before the close is taken below
        item = self._mailbox.take()
        if item is not None:
            return item
        return None if closed else last

    def _run(self) -> None:
        last: T | None = None
        while (item := self._next(last)) is not None:
            try:
                self._work(item)
            except Exception as error:  # counted and logged once per kind, never raised (module docstring)
                self._count(error)
                last = None
            else:
                last = item if self.repeat else None

    def _count(self, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        with self._lock:
            self._errors += 1
            self._last_error = message
            first = message not in self._logged and len(self._logged) < LOGGED_KINDS
            if first:
                self._logged.add(message)
        if first:
            log.warning("%s: %s; it goes on (the same error again is only counted)", self.name, message)
