"""A batch worker: one tracker, built once per process, tracks jobs into takes.

    outcome = track_job(tracker, options, job, report)   # in any process; report(frames, faces)
    worker_main(connection, options)                      # a worker process's loop (app.batch.pool)

Each job is tracked offline (``Job.offline``, the default): in two passes over the video, with each
track's identity pooled over all its frames and a zero-lag smoother (``tracker.offline``); else as
``python -m app.live --video VIDEO --record TAKE --mode sequential`` tracks it. Either way every
frame is recorded in order through the take's crash-safe journal (offline: in the second pass).
An unfinished journal left by a killed batch is deleted first (its video starts again from its
first frame); one that a running recording holds is a failure of that job.

The outcome of a job (``Outcome``):
    done     the take is written and at least one frame had a face
    failed   no face in any frame (the take is kept: tracking again finds none either), or an
             error; the frames tracked before an error are kept in ``NAME.incomplete.npz``, never
             at the take's own path, so a batch run again tracks that video again

Messages from a worker to the pool (``worker_main``), each a tuple:
    ("ready", pid)                          the tracker is built
    ("setup_failed", reason)                it cannot be built: the batch stops
    ("progress", job_index, frames, faces)  at most every PROGRESS_INTERVAL seconds
    ("finished", job_index, Outcome)
The pool sends a ``(job_index, Job)`` per job and None to end.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from app.batch.inputs import Job
from tracker.errors import TrackerError
from tracker.live.options import TrackerOptions

PROGRESS_INTERVAL = 0.5  # seconds between a worker's progress messages
INCOMPLETE_SUFFIX = ".incomplete.npz"


@dataclass(frozen=True)
class Outcome:
    """How one job ended: ``status`` "done" | "failed", ``reason`` one line ("" when done),
    ``frames`` tracked, ``faces_found`` frames with a face, ``wall_s`` seconds, ``fps`` frames per
    second of the tracking itself."""

    status: str
    reason: str
    frames: int
    faces_found: int
    wall_s: float
    fps: float


class _Counter:
    """Pipeline sink: counts frames and frames with a face, and reports them now and then."""

    def __init__(self, report: Callable[[int, int], None]) -> None:
        self.report, self.frames, self.faces = report, 0, 0
        self._last = 0.0

    def __call__(self, result) -> None:
        self.frames += 1
        self.faces += bool(result.faces)
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self.report(self.frames, self.faces)


def job_metadata(job: Job) -> dict:
    """What a batch take records of its job, so that a batch run again knows whether the take
    answers the same job: the video (absolute), the frame limit and the mode (offline, live)."""
    return {"batch_video": str(job.video.resolve()), "batch_max_frames": job.max_frames, "batch_mode": "offline" if job.offline else "live"}


def incomplete_path(take: Path) -> Path:
    """Where the frames of a job that failed part-way are kept: ``NAME.incomplete.npz``."""
    return take.with_name(take.name.removesuffix(".npz") + INCOMPLETE_SUFFIX)


def dataset_path(take: Path, format: str) -> Path:
    """Where a job's dataset of ``format`` goes: ``NAME_gaussian-avatars/`` beside the take."""
    return take.with_name(f"{take.name.removesuffix('.npz')}_{format}")


def track_job(tracker, options: TrackerOptions, job: Job, report: Callable[[int, int], None], dataset: str | None = None) -> Outcome:
    """Track ``job`` with ``tracker`` (a FaceTracker built from ``options``) into its take ->
    its Outcome; ``report(frames, faces)`` is called as it goes (offline: through the first pass,
    the bulk of the work); ``dataset``: also export the
    take and its frames in that format (``tracker.takes.nerf_dataset``; ``dataset_path``). Errors
    become a failed Outcome."""
    from tracker.live.pipeline import Pipeline
    from tracker.live.sinks import RecordingSink
    from tracker.live.sources import open_source
    from tracker.offline.two_pass import UNSMOOTHED, OfflineSmoothing, OfflineTracker
    from tracker.takes.recording import discard_abandoned_journal

    started = time.perf_counter()
    counter = _Counter(report)
    try:
        discard_abandoned_journal(job.take)

        def recording(source_name: str) -> RecordingSink:
            return RecordingSink(job.take, tracker.head, source=source_name, overwrite=True,
                                 metadata={**options.recording_metadata(), **tracker.fit_metadata(), **job_metadata(job)})

        if job.offline:
            smoothing = OfflineSmoothing() if options.smoothing else UNSMOOTHED
            OfflineTracker(tracker, smoothing).track(lambda: open_source(job.video, realtime=False), lambda source: [recording(source.name)],
                                                     job.max_frames, first_pass_sinks=[counter])
        else:
            source = open_source(job.video, realtime=False)
            try:
                sink = recording(source.name)
            except BaseException:
                source.stop()
                raise
            tracker.reset()
            Pipeline(source, tracker, [sink, counter], mode="sequential", max_frames=job.max_frames).run()
    except (TrackerError, OSError, ValueError, RuntimeError) as error:
        return _failed(job, counter, started, error)
    wall = time.perf_counter() - started
    fps = counter.frames / wall if wall > 0 else 0.0
    if counter.frames == 0:
        return Outcome("failed", "no frame could be read", 0, 0, wall, 0.0)
    incomplete_path(job.take).unlink(missing_ok=True)  # an earlier run's part of this video
    if counter.faces == 0:
        return Outcome("failed", f"no face in any of its {counter.frames} frames", counter.frames, 0, wall, fps)
    if dataset is not None:
        from tracker.takes.nerf_dataset import export_dataset
        from tracker.takes.recording import read_take

        try:
            export_dataset(read_take(job.take), job.video, tracker.head, dataset_path(job.take, dataset))
        except (TrackerError, OSError, ValueError) as error:
            return Outcome("failed", f"the take is written, its {dataset} dataset is not: {error}", counter.frames, counter.faces, wall, fps)
    return Outcome("done", "", counter.frames, counter.faces, wall, fps)


def _failed(job: Job, counter: _Counter, started: float, error: BaseException) -> Outcome:
    """A failed Outcome for ``error``; a take written before it moves to ``incomplete_path``."""
    wall = time.perf_counter() - started
    reason = str(error) if isinstance(error, TrackerError) else f"{type(error).__name__}: {error}"
    if job.take.exists() and counter.frames:
        kept = incomplete_path(job.take)
        os.replace(job.take, kept)
        reason += f" (the {counter.frames} frames tracked before it are kept in {kept})"
    return Outcome("failed", reason, counter.frames, counter.faces, wall, counter.frames / wall if wall > 0 else 0.0)


def worker_main(connection: Connection, options: TrackerOptions, dataset: str | None = None) -> None:
    """A worker process: build the tracker on one CPU thread, then track each job the pool sends
    until it sends None (module docstring for the messages). Ctrl-C is the pool's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)
    from tracker.console import configure_logging
    from tracker.live.face_tracker import FaceTracker

    configure_logging(verbose=False)
    try:
        tracker = FaceTracker.from_options(options)
    except (TrackerError, OSError, ValueError, RuntimeError) as error:
        connection.send(("setup_failed", str(error)))
        return
    connection.send(("ready", os.getpid()))
    try:
        while (message := connection.recv()) is not None:
            index, job = message
            outcome = track_job(tracker, options, job, lambda frames, faces, index=index: connection.send(("progress", index, frames, faces)), dataset)
            connection.send(("finished", index, outcome))
    except (EOFError, BrokenPipeError):  # the pool is gone
        pass
    finally:
        tracker.close()
