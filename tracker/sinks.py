"""Pipeline sinks that ship with the library: recording a take, and a progress display for headless runs.

A sink is any callable taking a ``TrackingResult``; one with a ``close()`` method is closed when
the pipeline ends (a recording is finalised there, also after Ctrl-C).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from tracker.head_models.base import HeadModel
from tracker.recording import AUTO, Recorder
from tracker.tracking import TrackingResult

log = logging.getLogger(__name__)


class RecordingSink:
    """Records every tracked face of every frame to a take (``tracker.recording``): one record per
    face with its track id and identity state; a frame without a face is one record with
    face_found False.

    Every head-model group is stored (those the network does not regress at their neutral
    values), with the rotation (6D), translation, crop box and the frame camera's intrinsics; the
    identity group (``identity_group``, see ``Recorder``) once per track in the finished take.
    ``metadata``: the caller's settings to keep with the take (checkpoint, refine, refine_iters,
    detector: ``tracker.options.TrackerOptions.recording_metadata``).
    """

    def __init__(
        self,
        path: str | Path,
        head: HeadModel,
        source: str = "",
        metadata: dict | None = None,
        overwrite: bool = False,
        identity_group: str | None = AUTO,
    ) -> None:
        groups = {name: group.size for name, group in head.param_groups.items()}
        self.recorder = Recorder(path, head.name, groups, source=source, metadata=metadata, overwrite=overwrite, identity_group=identity_group)

    @property
    def path(self) -> Path:
        return self.recorder.path

    def __call__(self, result: TrackingResult) -> None:
        frame = result.frame
        if not result.faces:
            self.recorder.append(frame.timestamp, frame.index, None, focal=result.focal, principal=result.principal, media_time=frame.source_time)
            return
        for face in result.faces:
            self.recorder.append(
                frame.timestamp,
                frame.index,
                {g: v.numpy() for g, v in face.params.items()},
                rotation_6d=face.rotation_6d.numpy(),
                translation=face.translation.numpy(),
                crop_box=face.crop_box,
                focal=result.focal,
                principal=result.principal,
                track_id=face.track_id,
                identity_state=face.identity_state,
                arkit=None if face.avatar is None else face.avatar.weights,
                eye_angles=None if face.avatar is None else face.avatar.eye_angles,
                media_time=frame.source_time,
            )

    def close(self) -> Path:
        return self.recorder.close()

    def discard(self) -> None:
        """Give up a recording that has not started (``Recorder.discard``): its empty journal goes."""
        self.recorder.discard()


class SwitchableSink:
    """A slot for a sink that the user switches on and off while the pipeline runs (recording,
    virtual camera). ``set(sink)`` / ``set(None)`` from any thread; the previous sink is closed
    (a recording finalised) outside the pipeline's sink call, which never waits on it long."""

    def __init__(self) -> None:
        self._sink = None
        self._lock = threading.Lock()

    @property
    def current(self):
        return self._sink

    def set(self, sink) -> None:
        with self._lock:
            previous, self._sink = self._sink, sink
        close = getattr(previous, "close", None)
        if close is not None:
            close()

    def __call__(self, result: TrackingResult) -> None:
        with self._lock:
            sink = self._sink
            if sink is not None:
                sink(result)

    def close(self) -> None:
        self.set(None)


class ProgressLog:
    """Shows a headless run's progress: frames tracked, fps, latency, faces found, frames dropped.

    On a terminal (``stream.isatty()``) a tqdm progress bar, out of ``total`` frames when the source
    declares them; elsewhere (a pipe, a log file) plain log lines, the first at the first tracked
    frame (when it came after the set-up), then one every ``interval`` seconds. ``stats``: the
    pipeline's PipelineStats.
    """

    def __init__(self, stats, total: int | None = None, interval: float = 2.0, stream: TextIO | None = None) -> None:
        self.stats, self.interval = stats, interval
        stream = sys.stderr if stream is None else stream
        self._bar = tqdm(total=total, unit="frame", file=stream, dynamic_ncols=True) if stream.isatty() else None
        self._started = time.monotonic()
        self._last: float | None = None

    def __call__(self, result: TrackingResult) -> None:
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(1)
            if self._last is None or now - self._last >= 0.5:
                self._last = now
                s = self.stats.snapshot()
                self._bar.set_postfix_str(f"{s.fps:.1f} fps, latency {s.latency_p50_ms:.0f} ms, faces {s.faces_found}/{s.frames_out}, {s.dropped} dropped", refresh=False)
            return
        if self._last is None:
            self._last = now
            log.info("tracking: first frame done %.1f s after the set-up", now - self._started)
            return
        if now - self._last < self.interval:
            return
        self._last = now
        s = self.stats.snapshot()
        log.info(
            "frame %d: %.1f fps, latency p50 %.0f ms p95 %.0f ms, faces in %d/%d frames, %d dropped",
            result.frame.index, s.fps, s.latency_p50_ms, s.latency_p95_ms, s.faces_found, s.frames_out, s.dropped,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
