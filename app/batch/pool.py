"""The local process pool: the batch's videos tracked by worker processes on this machine.

    pool = LocalPool(options, workers=2, retries=1)
    pool.run(jobs, progress, on_outcome)      # on_outcome(index, Outcome) as each video ends

Each worker is a process of its own (``multiprocessing``'s spawn start: nothing of the parent's
threads, torch or MediaPipe state is inherited) that builds one tracker on one CPU thread and
tracks one video at a time (``app.batch.worker``). The pool hands a video to a worker only when
it is idle, so it always knows which video each worker holds, and the longest videos first (by
their declared frame counts). Workers are watched through their
process handles:
    a worker that dies (killed, out of memory, a crash in native code) is replaced; its video is
        tried again up to ``retries`` times, then fails with the exit code
    a worker that cannot build its tracker (a bad checkpoint) stops the batch: TrackerError
    Ctrl-C ends every worker at once; their videos are "interrupted" (their journals are
        deleted when the batch is run again, and those videos start over)
"""

from __future__ import annotations

import collections
import multiprocessing
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from app.batch.inputs import Job
from app.batch.progress import BatchProgress
from app.batch.worker import Outcome, worker_main
from tracker.errors import TrackerError
from tracker.live.options import TrackerOptions

JOIN_SECONDS = 10.0  # a worker's time to leave after the last job before it is terminated


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    connection: Connection
    ready: bool = False
    pid: int | None = None
    job: int | None = None
    gone: bool = False  # its end of the pipe closed: nothing more will come


class LocalPool:
    """``workers`` worker processes tracking with ``options`` (module docstring); ``dataset``: a
    dataset format each video is also exported in."""

    def __init__(self, options: TrackerOptions, workers: int, retries: int = 1, dataset: str | None = None) -> None:
        if workers < 1:
            raise ValueError(f"a pool needs at least one worker, got {workers}")
        self.options, self.workers, self.retries, self.dataset = options, workers, retries, dataset
        self._context = multiprocessing.get_context("spawn")

    def run(self, jobs: list[Job], progress: BatchProgress, on_outcome: Callable[[int, Outcome], None]) -> None:
        """Track every job; ``on_outcome(index, outcome)`` as each ends (index into ``jobs``).
        KeyboardInterrupt after every worker ended; the caller marks the unfinished videos."""
        # the longest videos first: a long one started last would leave the other workers idle at the end
        pending = collections.deque(sorted(range(len(jobs)), key=lambda i: -jobs[i].expected_frames))
        attempts: collections.Counter[int] = collections.Counter()
        workers: list[_Worker] = [self._start() for _ in range(min(self.workers, len(jobs)))]
        try:
            while pending or any(w.job is not None for w in workers):
                for slot, worker in enumerate(workers):
                    if worker.ready and worker.job is None and pending:
                        worker.job = pending.popleft()
                        worker.connection.send((worker.job, jobs[worker.job]))
                        progress.started(slot, jobs[worker.job], worker.pid)
                ready = set(wait([w.connection for w in workers] + [w.process.sentinel for w in workers], timeout=0.5))
                for slot, worker in enumerate(workers):
                    if worker.connection in ready:
                        self._receive(slot, worker, jobs, progress, on_outcome)
                    if not worker.process.is_alive() and (worker.gone or not worker.connection.poll()):
                        workers[slot] = self._replace(slot, worker, jobs, pending, attempts, progress, on_outcome)
                progress.refresh()
        except BaseException:
            for worker in workers:
                worker.process.terminate()
            for worker in workers:
                worker.process.join(JOIN_SECONDS)
            raise
        self._stop(workers)

    # -- workers -------------------------------------------------------------------------------
    def _start(self) -> _Worker:
        parent, child = self._context.Pipe()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child starts deaf to Ctrl-C (worker_main keeps it so)
        try:
            process = self._context.Process(target=worker_main, args=(child, self.options, self.dataset), daemon=True)
            process.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        child.close()
        return _Worker(process, parent)

    def _receive(self, slot: int, worker: _Worker, jobs: list[Job], progress: BatchProgress, on_outcome) -> None:
        while worker.connection.poll():
            try:
                message = worker.connection.recv()
            except (EOFError, OSError):
                worker.gone = True  # it died: its sentinel says so
                return
            kind = message[0]
            if kind == "ready":
                worker.ready, worker.pid = True, message[1]
                progress.idle(slot, worker.pid)
            elif kind == "setup_failed":
                raise TrackerError(f"the tracker cannot be built: {message[1]}")
            elif kind == "progress" and message[1] == worker.job:
                progress.progress(slot, message[2])
            elif kind == "finished":
                index, outcome = message[1], message[2]
                worker.job = None
                progress.idle(slot, worker.pid)
                on_outcome(index, outcome)

    def _replace(self, slot: int, worker: _Worker, jobs: list[Job], pending, attempts, progress: BatchProgress, on_outcome) -> _Worker:
        """``worker`` died: its video is tried again or fails; a new worker takes its place."""
        worker.process.join()
        code = worker.process.exitcode
        if not worker.ready:
            raise TrackerError(f"a worker process died while it was starting (exit code {code}); run one video with python -m app.live to see why")
        if worker.job is not None:
            index = worker.job
            attempts[index] += 1
            if attempts[index] <= self.retries:
                pending.appendleft(index)
                progress.finished(slot, f"retry {jobs[index].name}: its worker process died (exit code {code}); trying it again")
            else:
                on_outcome(index, Outcome("failed", f"its worker process died (exit code {code}), {attempts[index]} times", 0, 0, 0.0, 0.0))
        progress.idle(slot)
        return self._start()

    def _stop(self, workers: list[_Worker]) -> None:
        for worker in workers:
            try:
                worker.connection.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in workers:
            worker.process.join(JOIN_SECONDS)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join()
