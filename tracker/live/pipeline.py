"""The frame loop: capture -> detect/crop/cue -> N2FNet -> decode/smooth -> sinks, stages overlapping.

    capture thread   FrameSource (live sources keep only the newest frame; files every frame)
    prepare thread   FaceTracker.prepare: MediaPipe, smoothed crop, geometry cue        (CPU)
    network thread   CpuFeeder / CudaFeeder submit, Pending.result, FaceTracker.finish    (device)
    sink thread      every sink in turn, then the statistics

Threads are joined by FIFO queues of one slot (``put`` waits while the slot is full), so at most
one frame waits between two stages; a slow stage makes the prepare thread read less often and a
live source then drops the frames it overwrote (counted, never queued). Every frame that enters
the prepare stage reaches the sinks exactly once, in order. On CUDA the network thread submits
frame k+1 before it finishes frame k, so the upload of k+1 overlaps the compute of k (see
``tracker.live.feed``); on the CPU, where the network runs inside ``submit``, a frame is
finished at once (holding it would only add a network time to its latency).

Live sources (``FrameSource.realtime``: cameras, streams, files paced at their rate): a frame must
not wait in a queue while newer ones arrive. The prepare thread reads the next frame only once
the network stage has taken the previous one, and then just in time (``_JustInTime``): as late as
the running means of the stage times allow for it to be prepared when the network stage becomes
free. So a frame's capture-to-result latency stays near one frame's processing time while the
stages still overlap. Files read every frame as fast as the stages take them.

``mode="sequential"`` runs every stage of a frame in one thread before reading the next (the
benchmark's baseline, and a simpler path to debug with).

Stopping: ``stop()`` (Ctrl-C, window closed) stops reading frames; the frames already inside
finish and reach the sinks, then every sink is closed (a recording is finalised).

Errors: an error in the capture, prepare or network stage stops the reading and travels down the
queues behind the frames already past that stage, which still finish and reach the sinks (as in
sequential mode); then ``run()`` / ``wait()`` raise it. An error in a sink stops every thread at once.

Frame errors (``TrackingResult.errors``: a face left out because the network's or the refinement's
outputs were not finite) do not stop the run: the frame reaches the sinks without that face,
``StatsSnapshot.frame_errors`` counts it, and ``FrameErrorLog`` warns (the first at once, then at
most one line per ``FrameErrorLog.interval`` seconds with how many there were since, and the
count left unreported when the pipeline closes).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tracker.live.face_tracker import FaceTracker
from tracker.live.feed import Pending, create_feeder
from tracker.live.options import MODES
from tracker.live.results import Prepared, Stopwatch, TrackingResult
from tracker.live.sources import FrameSource

if TYPE_CHECKING:  # the sinks module loads the take format: for the annotation only
    from tracker.live.sinks import Sink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _End:
    """End of the stream, passed down the queues behind the last frame; ``error``: what ended it."""

    error: BaseException | None = None


@dataclass
class StatsSnapshot:
    """Running figures of a pipeline (window = the last ``window`` results).

    frames_read, frames_out: frames taken from the source / delivered to sinks
    faces_found:  delivered frames with at least one face
    dropped:      frames the source dropped (live sources only)
    fps:          delivered frames per second over the window
    latency_p50_ms, latency_p95_ms: capture -> result over the window
    processing_p50_ms, processing_p95_ms: pipeline takes the frame -> result, over the window
    stage_ms:     {stage: mean ms} over the window
    frame_errors: delivered frames with an error (``TrackingResult.errors``: a face left out, its
                  network or refined outputs not finite; not counted in ``faces_found`` for it)
    """

    frames_read: int
    frames_out: int
    faces_found: int
    dropped: int
    fps: float
    latency_p50_ms: float
    latency_p95_ms: float
    processing_p50_ms: float
    processing_p95_ms: float
    stage_ms: dict[str, float]
    frame_errors: int = 0

    @property
    def detection_rate(self) -> float:
        return self.faces_found / self.frames_out if self.frames_out else 0.0


class PipelineStats:
    """Thread-safe counters and windows; ``snapshot()`` reads them."""

    def __init__(self, window: int = 120) -> None:
        self._lock = threading.Lock()
        self.frames_read = self.frames_out = self.faces_found = self.dropped = self.frame_errors = 0
        self._times: deque[float] = deque(maxlen=window)
        self._latency: deque[float] = deque(maxlen=window)
        self._processing: deque[float] = deque(maxlen=window)
        self._stages: deque[dict[str, float]] = deque(maxlen=window)

    def count_read(self) -> None:
        with self._lock:
            self.frames_read += 1

    def add(self, result: TrackingResult, delivered_at: float) -> None:
        with self._lock:
            self.frames_out += 1
            self.faces_found += result.face_found
            self.frame_errors += bool(result.errors)
            self.dropped = result.dropped
            self._times.append(delivered_at)
            self._latency.append(result.latency_ms)
            self._processing.append(result.processing_ms)
            self._stages.append(result.timings)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            times, stages = list(self._times), list(self._stages)
            latency, processing = np.array(self._latency), np.array(self._processing)
            counts = (self.frames_read, self.frames_out, self.faces_found, self.dropped)
            frame_errors = self.frame_errors
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        names = sorted({name for s in stages for name in s})
        stage_ms = {name: float(np.mean([s.get(name, 0.0) for s in stages])) for name in names}
        return StatsSnapshot(*counts, fps, *_percentiles(latency), *_percentiles(processing), stage_ms, frame_errors)


class FrameErrorLog:
    """Warns about frame errors (``TrackingResult.errors``) without a line per frame: the first at
    once, then at most one line per ``interval`` seconds (``clock``), saying how many frames had
    errors since the last line; ``flush()`` reports those left (at the end of a run)."""

    def __init__(self, interval: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self._clock = interval, clock
        self._last: float | None = None  # when the last line was logged
        self._unreported = 0  # frames with errors since then
        self._latest = ""

    def __call__(self, result: TrackingResult) -> None:
        if not result.errors:
            return
        self._unreported += 1
        self._latest = f"frame {result.frame.index}: {'; '.join(result.errors)}"
        now = self._clock()
        if self._last is None:
            log.warning("%s (faces with non-finite outputs are left out and counted as frame errors; further ones are reported every %g s)", self._latest, self.interval)
            self._last, self._unreported = now, 0
        elif now - self._last >= self.interval:
            self.flush()
            self._last = now

    def flush(self) -> None:
        """Log the frames with errors not reported yet, if any."""
        if self._unreported:
            log.warning("%d more frame(s) with errors in %.0f s, the last %s", self._unreported, self._clock() - self._last, self._latest)
            self._unreported = 0


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """(p50, p95) of ``values``; zeros when empty."""
    if not len(values):
        return 0.0, 0.0
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


class _JustInTime:
    """When the prepare stage should read a live source's next frame: so that the frame is prepared
    as the network stage becomes free, not earlier (module docstring). Stage times are running means
    (exponential, weight ``rate`` for the newest)."""

    def __init__(self, rate: float = 0.2) -> None:
        self._lock = threading.Lock()
        self._rate = rate
        self._prepare_s = self._network_s = 0.0
        self._network_since: float | None = None

    def _mean(self, mean: float, seconds: float) -> float:
        return seconds if mean == 0.0 else (1.0 - self._rate) * mean + self._rate * seconds

    def prepared(self, seconds: float) -> None:
        with self._lock:
            self._prepare_s = self._mean(self._prepare_s, seconds)

    def network_took(self, now: float) -> None:
        with self._lock:
            self._network_since = now

    def network_done(self, seconds: float) -> None:
        with self._lock:
            self._network_s = self._mean(self._network_s, seconds)
            self._network_since = None

    def delay(self, now: float) -> float:
        """Seconds to wait before reading the next frame (0 when the network stage is idle)."""
        with self._lock:
            if self._network_since is None:
                return 0.0
            return max(0.0, self._network_since + self._network_s - self._prepare_s - now)


class Pipeline:
    """Runs ``tracker`` on ``source`` and hands results to ``sinks`` (module docstring).

    max_frames: stop after this many frames read from the source (None: until it ends / stop()).
    stats: where the running figures go (None: a new PipelineStats); pass one to give it to a
    sink, e.g. a progress display, before the pipeline exists.
    Sinks with a ``close()`` method are closed when the pipeline ends. Use ``run()`` to block
    until the end, or ``start()`` / ``stop()`` / ``wait()`` around a GUI event loop.
    """

    def __init__(
        self,
        source: FrameSource,
        tracker: FaceTracker,
        sinks: Sequence[Sink | Callable[[TrackingResult], None]] = (),
        *,
        mode: str = "async",
        max_frames: int | None = None,
        stats: PipelineStats | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be at least 1 (None: no limit), got {max_frames}")
        self.source, self.tracker, self.sinks = source, tracker, list(sinks)
        self.mode, self.max_frames = mode, max_frames
        self.stats = PipelineStats() if stats is None else stats
        self.error_log = FrameErrorLog()
        self.feeder = create_feeder(tracker.run_network, tracker.device)
        self._stopping = threading.Event()  # graceful: read no more frames
        self._abort = threading.Event()  # an error: every thread leaves now
        self._error: BaseException | None = None
        self._prepared: queue.Queue = queue.Queue(maxsize=1)
        self._results: queue.Queue = queue.Queue(maxsize=1)
        self._taken = threading.Condition()  # notified when the network stage takes a prepared frame
        self._schedule = _JustInTime()
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        self._closed = False

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> Pipeline:
        if self._threads:
            raise RuntimeError("a Pipeline can be started only once")
        self.source.start()
        if self.mode == "async":
            targets = {"prepare": self._prepare_loop, "network": self._network_loop, "sinks": self._sink_loop}
        else:
            targets = {"sequential": self._sequential_loop}
        self._threads = [threading.Thread(target=self._guard(t), name=f"pipeline {n}", daemon=True) for n, t in targets.items()]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, let the frames inside reach the sinks, close sinks and source. Idempotent."""
        self._stopping.set()
        self.wait(timeout, raise_error=False)
        self._abort.set()
        self._close()

    def wait(self, timeout: float | None = None, raise_error: bool = True) -> bool:
        """Wait until the source ended (or max_frames) and every result is delivered; True when
        done. Raises the error that stopped a stage."""
        done = self._done.wait(timeout) if self._threads else True
        if done:
            for thread in self._threads:
                thread.join()
        if raise_error and self._error is not None:
            raise self._error
        return done

    def run(self) -> StatsSnapshot:
        """start(), wait for the end, stop(); Ctrl-C stops cleanly and is re-raised."""
        self.start()
        try:
            self.wait()
        finally:
            self.stop()
        if self._error is not None:
            raise self._error
        return self.stats.snapshot()

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._done.is_set()

    # -- threads ---------------------------------------------------------------------------------
    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # handed to wait()/run()
                if self._error is None:
                    self._error = error
                self._abort.set()
                self._done.set()

        return run

    def _frames(self, before_read: Callable[[], bool] | None = None):
        """Frames from the source until it ends, max_frames, or stop(); ``before_read`` runs before
        each read and ends the frames when it returns False."""
        while not self._stopping.is_set() and not self._abort.is_set():
            if self.max_frames is not None and self.stats.frames_read >= self.max_frames:
                return
            if before_read is not None and not before_read():
                return
            frame = self.source.read(timeout=0.1)
            if frame is None:
                if self.source.finished:
                    return
                continue
            self.stats.count_read()
            yield frame

    def _put(self, target: queue.Queue, item) -> bool:
        while not self._abort.is_set():
            try:
                target.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, source: queue.Queue, timeout: float):
        """Next item, or None after ``timeout``; raises _Aborted when the pipeline aborts."""
        deadline = time.monotonic() + timeout
        while True:
            if self._abort.is_set():
                raise _Aborted
            try:
                return source.get(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return None

    def _prepare_loop(self) -> None:
        end = _End()
        try:
            for frame in self._frames(self._wait_to_read if self.source.realtime else None):
                started = time.monotonic()
                prepared = self.tracker.prepare(frame)
                self._schedule.prepared(time.monotonic() - started)
                if not self._put(self._prepared, prepared):
                    return
        except Exception as error:  # the frames before it go on to the sinks
            end = _End(error)
            self._stopping.set()
        self._put(self._prepared, end)

    def _wait_to_read(self) -> bool:
        """Live sources: wait until the network stage has taken the prepared frame, then until the
        just-in-time moment (``_JustInTime``); False when the pipeline stops meanwhile."""
        with self._taken:
            while self._prepared.full():
                if self._stopping.is_set() or self._abort.is_set():
                    return False
                self._taken.wait(0.1)
        delay = self._schedule.delay(time.monotonic())
        return not (self._stopping.wait(delay) or self._abort.is_set()) if delay > 0 else True

    def _network_loop(self) -> None:
        in_flight: tuple[Prepared, Pending | None] | None = None
        item, end = None, _End()
        try:
            while True:
                item = self._get(self._prepared, 0.0 if in_flight else 3600.0)
                if isinstance(item, _End):
                    end = item
                    break
                taken = time.monotonic()
                if item is not None:
                    with self._taken:
                        self._taken.notify_all()
                    self._schedule.network_took(taken)
                submitted = None if item is None else (item, self._submit(item))
                if in_flight is not None:  # frame k finishes while frame k+1 computes
                    done, in_flight = in_flight, None
                    self._put(self._results, self._finish(*done))
                in_flight = submitted
                if in_flight is not None and not self.feeder.overlapped:  # CPU: nothing would run meanwhile
                    done, in_flight = in_flight, None
                    self._put(self._results, self._finish(*done))
                if item is not None:
                    self._schedule.network_done(time.monotonic() - taken)
        except _Aborted:
            return
        except Exception as error:  # the frame in flight still finishes, then the error goes on
            self._stopping.set()
            end = _End(error)
        try:
            if in_flight is not None:
                self._put(self._results, self._finish(*in_flight))
        except _Aborted:
            return
        except Exception as error:
            self._stopping.set()
            end = end if end.error is not None else _End(error)
        if end.error is not None and not isinstance(item, _End):
            self._drain(self._prepared)
        self._put(self._results, end)

    def _drain(self, source: queue.Queue) -> None:
        """Take (and drop) items until the end marker, so the stage above can finish."""
        try:
            while not isinstance(self._get(source, 3600.0), _End):
                pass
        except _Aborted:
            pass

    def _sink_loop(self) -> None:
        try:
            while not isinstance(result := self._get(self._results, 3600.0), _End):
                if result is not None:
                    self._deliver(result)
            if result.error is not None and self._error is None:
                self._error = result.error
        except _Aborted:
            return
        finally:
            self._done.set()

    def _sequential_loop(self) -> None:
        try:
            for frame in self._frames():
                prepared = self.tracker.prepare(frame)
                self._deliver(self._finish(prepared, self._submit(prepared)))
        finally:
            self._done.set()

    # -- stage work ------------------------------------------------------------------------------
    def _submit(self, prepared: Prepared) -> Pending | None:
        if prepared.inputs is None:
            return None
        with Stopwatch(prepared.timings)("network"):
            return self.feeder.submit(prepared.inputs)

    def _finish(self, prepared: Prepared, pending: Pending | None) -> TrackingResult:
        raw = None
        if pending is not None:
            with Stopwatch(prepared.timings)("network"):
                raw = pending.result()
        result = self.tracker.finish(prepared, raw)
        now = time.monotonic()
        result.latency_ms = (now - prepared.frame.timestamp) * 1000.0
        result.processing_ms = (now - prepared.started) * 1000.0
        result.dropped = self.source.frames_dropped
        return result

    def _deliver(self, result: TrackingResult) -> None:
        for sink in self.sinks:
            sink(result)
        self.stats.add(result, time.monotonic())
        self.error_log(result)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.source.stop()
        self.error_log.flush()
        errors = []
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as error:  # close the others, then report
                    errors.append(error)
        if errors and self._error is None:
            self._error = errors[0]


class _Aborted(Exception):
    """Raised inside a stage thread when another stage failed."""
