"""The batch's one progress display: the whole batch, then one line per worker.

    batch: 3/12 videos, 4,210/18,300 frames, 41.8 fps, ETA 5 min 37 s
      worker 1: cap12_edit (pid 4242) 812/1,337 frames, 20.9 fps
      worker 2: idle

On a terminal the block is redrawn in place twice a second, with each finished video's line
printed above it; elsewhere (a pipe, a log file) the batch line is printed every ``interval``
seconds. The frames per second of the batch are the frames tracked by this run over its time so
far; the ETA is the frames left at that rate (the videos left at this run's time per video when
a file does not declare its frame count).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from app.batch.inputs import Job


@dataclass
class _Slot:
    job: Job | None = None
    pid: int | None = None
    frames: int = 0
    started: float = 0.0


class BatchProgress:
    """The display (module docstring) for ``jobs`` tracked by ``workers`` workers."""

    def __init__(self, jobs: list[Job], workers: int, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.videos = len(jobs)
        self.frames_total = sum(job.expected_frames for job in jobs)
        self.unknown_length = any(job.expected_frames == 0 for job in jobs)
        self.slots = [_Slot() for _ in range(workers)]
        self.done_videos = 0
        self.done_frames = 0  # frames of finished videos tracked by this run
        self.expected_done = 0  # their expected frames
        self._start = time.monotonic()
        self._drawn = 0
        self._last = 0.0

    # -- events --------------------------------------------------------------------------------
    def started(self, worker: int, job: Job, pid: int | None) -> None:
        self.slots[worker] = _Slot(job, pid, 0, time.monotonic())
        self.refresh()

    def progress(self, worker: int, frames: int) -> None:
        self.slots[worker].frames = frames
        self.refresh()

    def finished(self, worker: int | None, line: str, frames: int = 0, job: Job | None = None) -> None:
        """A video ended (``worker`` None: one the batch did not track): ``line`` is printed for good."""
        if worker is not None:
            self.slots[worker] = _Slot(pid=self.slots[worker].pid)
        if job is not None:
            self.done_videos += 1
            self.done_frames += frames
            self.expected_done += job.expected_frames
        self._print(line)

    def idle(self, worker: int, pid: int | None = None) -> None:
        self.slots[worker] = _Slot(pid=pid)

    # -- figures -------------------------------------------------------------------------------
    def frames_now(self) -> int:
        return self.done_frames + sum(slot.frames for slot in self.slots if slot.job is not None)

    def batch_line(self) -> str:
        elapsed = time.monotonic() - self._start
        frames = self.frames_now()
        fps = frames / elapsed if elapsed > 0 else 0.0
        if self.unknown_length:
            eta = elapsed / self.done_videos * (self.videos - self.done_videos) if self.done_videos else None
            amount = f"{frames:,} frames"
        else:
            in_flight = sum(slot.job.expected_frames - slot.frames for slot in self.slots if slot.job is not None)
            pending = self.frames_total - self.expected_done - sum(slot.job.expected_frames for slot in self.slots if slot.job is not None)
            left = max(0, in_flight + pending)
            eta = left / fps if fps > 0 else None
            amount = f"{frames:,}/{self.frames_total:,} frames"
        return f"batch: {self.done_videos}/{self.videos} videos, {amount}, {fps:.1f} fps, ETA {_duration(eta)}"

    def worker_lines(self) -> list[str]:
        lines = []
        for number, slot in enumerate(self.slots, start=1):
            if slot.job is None:
                lines.append(f"  worker {number}: idle")
                continue
            elapsed = time.monotonic() - slot.started
            total = f"/{slot.job.expected_frames:,}" if slot.job.expected_frames else ""
            fps = slot.frames / elapsed if elapsed > 0 else 0.0
            pid = f" (pid {slot.pid})" if slot.pid else ""
            lines.append(f"  worker {number}: {slot.job.name}{pid} {slot.frames:,}{total} frames, {fps:.1f} fps")
        return lines

    # -- drawing -------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.5 if self.tty else self.interval):
            return
        self._last = now
        if self.tty:
            self._erase()
            block = [self.batch_line(), *self.worker_lines()]
            self.stream.write("\n".join(block) + "\n")
            self._drawn = len(block)
        else:
            self.stream.write(self.batch_line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._erase()
        self.stream.write(self.batch_line() + "\n")
        self.stream.flush()

    def _print(self, line: str) -> None:
        self._erase()
        self.stream.write(line + "\n")
        self.stream.flush()
        if self.tty:
            self._last = 0.0
            self.refresh()

    def _erase(self) -> None:
        if self.tty and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the block's first line, then clear to the end
            self._drawn = 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
