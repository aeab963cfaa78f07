"""The batch on a Ray cluster (``python -m app.batch ... --ray [ADDRESS]``): the same jobs as Ray tasks.

    pool = RayPool(options, address="127.0.0.1:6379", retries=1)
    pool.run(jobs, progress, on_outcome)      # the LocalPool's interface

Ray is an optional extra (``pip install -e ".[cluster]"``). Start a cluster first: ``ray start
--head`` on one machine, then ``ray start --address HEAD:6379`` on each of the others; every
machine needs this project installed and the videos and the output folder at the same paths (a
shared file system). ``--ray`` alone connects to the cluster that ``RAY_ADDRESS`` or ``ray
start`` on this machine names.

Each video is one task needing one CPU (``num_cpus=1``), the longest first. A task runs
``app.batch.worker.track_job`` in a Ray worker process, which builds its tracker on the first
task and keeps it for the next (``_tracker``). A task whose worker process dies (killed, out of
memory) is run again by Ray, up to ``retries`` times; the new attempt deletes the journal the
dead one left and starts the video over. Tasks report their progress to one small actor
(``_Progress``), which the driver reads twice a second for the display.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from app.batch.inputs import Job
from app.batch.progress import BatchProgress
from app.batch.worker import Outcome, track_job
from tracker.errors import TrackerError
from tracker.live.options import TrackerOptions

INSTALL = 'pip install -e ".[cluster]"'
CONNECT_SECONDS = 5.0
_trackers: dict[str, object] = {}  # in a Ray worker process: its trackers by their options


def _tracker(options: TrackerOptions):
    """This process's tracker for ``options``, built on first use, on one CPU thread."""
    key = repr(options)
    if key not in _trackers:
        import torch

        from tracker.live.face_tracker import FaceTracker

        torch.set_num_threads(1)
        _trackers[key] = FaceTracker.from_options(options)
    return _trackers[key]


def _track_task(options: TrackerOptions, index: int, job: Job, progress, dataset: str | None = None) -> tuple[str, object]:
    """A Ray task: ("outcome", Outcome) of ``job``, or ("setup_failed", reason)."""
    progress.start.remote(index, os.getpid())
    try:
        tracker = _tracker(options)
    except (TrackerError, OSError, ValueError, RuntimeError) as error:
        return "setup_failed", str(error)
    return "outcome", track_job(tracker, options, job, lambda frames, faces: progress.frames.remote(index, frames), dataset)


class _ProgressState:
    """The progress actor's state: per job, the pid of its latest attempt, its frames, its attempts."""

    def __init__(self) -> None:
        self.jobs: dict[int, list[int]] = {}  # index -> [pid, frames, attempts]

    def start(self, index: int, pid: int) -> None:
        attempts = self.jobs.get(index, [0, 0, 0])[2]
        self.jobs[index] = [pid, 0, attempts + 1]

    def frames(self, index: int, frames: int) -> None:
        if index in self.jobs:
            self.jobs[index][1] = frames

    def snapshot(self) -> dict[int, list[int]]:
        return self.jobs


class RayPool:
    """The jobs as Ray tasks on the cluster at ``address`` (None: ``ray.init("auto")``); ``dataset``:
    a dataset format each video is also exported in."""

    def __init__(self, options: TrackerOptions, address: str | None, retries: int = 1, dataset: str | None = None) -> None:
        self.options, self.address, self.retries, self.dataset = options, address, retries, dataset

    def run(self, jobs: list[Job], progress: BatchProgress, on_outcome: Callable[[int, Outcome], None]) -> None:
        ray = connect(self.address)
        try:
            self._run(ray, jobs, progress, on_outcome)
        finally:
            ray.shutdown()  # the driver leaves; the cluster stays

    def _run(self, ray, jobs: list[Job], progress: BatchProgress, on_outcome) -> None:
        reporter = ray.remote(num_cpus=0)(_ProgressState).remote()
        task = ray.remote(num_cpus=1, max_retries=self.retries, retry_exceptions=False)(_track_task)
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i].expected_frames)
        refs = {task.remote(self.options, index, jobs[index], reporter, self.dataset): index for index in order}
        slots: dict[int, int] = {}  # job index -> display slot
        attempts: dict[int, int] = {}
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.5)
                for ref in done:
                    index = refs.pop(ref)
                    outcome = self._outcome(ray, ref, attempts.get(index, 1))
                    if index in slots:
                        progress.idle(slots.pop(index))
                    on_outcome(index, outcome)
                self._show(ray.get(reporter.snapshot.remote()), refs, slots, attempts, jobs, progress)
                progress.refresh()
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise

    def _outcome(self, ray, ref, attempts: int) -> Outcome:
        try:
            kind, value = ray.get(ref)
        except ray.exceptions.RayError as error:  # its worker died more often than retries allow
            return Outcome("failed", f"its Ray worker died, {attempts} times ({type(error).__name__})", 0, 0, 0.0, 0.0)
        if kind == "setup_failed":
            raise TrackerError(f"the tracker cannot be built on the Ray cluster: {value}")
        return value

    def _show(self, snapshot: dict[int, list[int]], refs: dict, slots: dict[int, int], attempts: dict[int, int], jobs: list[Job],
              progress: BatchProgress) -> None:
        """The running tasks of ``snapshot`` into the display's worker lines; a new attempt of a
        job is a retry line."""
        running = set(refs.values())
        for index, (pid, frames, tries) in snapshot.items():
            if index not in running:
                continue
            if tries > attempts.get(index, 1):
                progress.finished(None, f"retry {jobs[index].name}: its Ray worker died; trying it again (attempt {tries})")
            attempts[index] = tries
            if index not in slots:
                free = sorted(set(range(len(progress.slots))) - set(slots.values()))
                if not free:
                    continue
                slots[index] = free[0]
                progress.started(free[0], jobs[index], pid)
            progress.slots[slots[index]].pid = pid
            progress.progress(slots[index], frames)


def connect(address: str | None):
    """``ray``, connected to the cluster at ``address`` (None: "auto"); TrackerError saying how to
    install Ray or start a cluster."""
    try:
        import ray
    except ImportError:
        raise TrackerError(f"--ray needs Ray, an optional extra: {INSTALL}") from None
    if address:
        _reachable(address)  # ray.init waits minutes for an address where nothing listens
    try:
        ray.init(address=address or "auto", log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise TrackerError(f"no Ray cluster at {address or 'the address RAY_ADDRESS or `ray start` gives'} ({error}); start one with "
                           "`ray start --head` (then `ray start --address HEAD:6379` on each other machine)") from None
    return ray


def _reachable(address: str) -> None:
    """TrackerError unless something listens at ``address`` (host:port), within CONNECT_SECONDS."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TrackerError(f"--ray {address}: give the cluster's address as host:port (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise TrackerError(f"no Ray cluster at {address} ({error.strerror or error}); start one with `ray start --head` "
                           "(then `ray start --address HEAD:6379` on each other machine)") from None


def cluster_cpus(address: str | None) -> int:
    """The CPUs of the cluster at ``address`` (connecting and leaving again)."""
    ray = connect(address)
    try:
        return int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()
