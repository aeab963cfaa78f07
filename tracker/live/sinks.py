"""The pipeline's ``Sink`` protocol and the sinks that ship with the library.

A sink is any callable taking a ``TrackingResult`` (``Sink``); one with a ``close()`` method is
closed when the pipeline ends (a recording is finalised there, also after Ctrl-C). A sink whose
output may be slow hands each result to its own thread (``tracker.live.mailbox``). Every sink:

    RecordingSink      tracker/live/sinks.py           every tracked face to a take (--record)
    SwitchableSink     tracker/live/sinks.py           a slot the user switches a sink into and out of
    ProgressLog        tracker/live/sinks.py           a headless run's progress bar or log lines
    StreamSink         tracker/outputs/streaming.py    base of the UDP avatar streams (sender thread)
      VmcSink          tracker/outputs/streaming.py    --vmc: VMC bundles for VSeeFace, VNyan, Warudo
      LiveLinkSink     tracker/outputs/streaming.py    --livelink: Live Link Face packets for Unreal
      OscSink          tracker/outputs/streaming.py    --osc: every face's parameters and pose over OSC
    VirtualCameraSink  app/virtualcam.py               --virtualcam: the drawn frames to a virtual camera
    ResultBridge       app/viewer.py                   the newest result for the viewer's GUI thread
    VideoMeter         train/evaluate_real.py          counts, times and jitters of an evaluated video
    Keep               train/landmark_pictures.py      the results of chosen frames, for the pictures
    (plain functions)  app/bench_viewer.py, train/pseudo_gt.py: keep results / write pseudo labels
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Protocol, TextIO

from tqdm import tqdm

from tracker.head_models.base import HeadModel
from tracker.live.results import TrackingResult
from tracker.takes.recording import AUTO, Recorder

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Receives every TrackingResult, in frame order, on the pipeline's sink thread."""

    def __call__(self, result: TrackingResult) -> None: ...


class RecordingSink:
    """Records every tracked face of every frame to a take (``tracker.takes.recording``): one record per
    face with its track id and identity state; a frame without a face is one record with
    face_found False.

    Every head-model group is stored (those the network does not regress at their neutral
    values), with the rotation (6D), translation, crop box and the frame camera's intrinsics; the
    identity group (``identity_group``, see ``Recorder``) once per track in the finished take.
    ``metadata``: the caller's settings to keep with the take (checkpoint, refine, refine_iters,
    detector: ``tracker.live.options.TrackerOptions.recording_metadata``).
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
                arkit_raw=None if face.avatar is None else face.avatar.raw_weights,
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
    """Shows a headless run's progress: frames tracked, fps, latency, faces found, frames dropped,
    and for a run of known length (``total`` frames: a file's declared count, or --max-frames)
    the percent done and the time left (ETA, from the recent fps).

    On a terminal (``stream.isatty()``) a tqdm progress bar; elsewhere (a pipe, a log file) plain
    log lines, one every ``interval`` seconds. The first tracked frame is logged either way with
    how long it took from ``launch`` (``time.monotonic()`` of the process start; None: of this
    display's creation) and ``startup``, what that time went to (e.g. "imports 1.9 s, tracker
    0.6 s"). ``stats``: the pipeline's PipelineStats.
    """

    def __init__(
        self, stats, total: int | None = None, interval: float = 2.0, stream: TextIO | None = None,
        launch: float | None = None, startup: str = "",
    ) -> None:
        self.stats, self.total, self.interval = stats, total, interval
        stream = sys.stderr if stream is None else stream
        self._bar = tqdm(total=total, unit="frame", file=stream, dynamic_ncols=True) if stream.isatty() else None
        self._started = time.monotonic()
        self._launch = self._started if launch is None else launch
        self._startup = startup
        self._last: float | None = None

    def __call__(self, result: TrackingResult) -> None:
        now = time.monotonic()
        first = self._last is None
        if first:
            self._last = now
            if self._bar is not None:
                self._bar.write(self._first_frame_line(now))
            else:
                log.info(self._first_frame_line(now))
        if self._bar is not None:
            self._bar.update(1)
            if first or now - self._last >= 0.5:
                self._last = now
                s = self.stats.snapshot()
                self._bar.set_postfix_str(f"{s.fps:.1f} fps, latency {s.latency_p50_ms:.0f} ms, faces {s.faces_found}/{s.frames_out}, {s.dropped} dropped", refresh=False)
            return
        if now - self._last < self.interval:
            return
        self._last = now
        s = self.stats.snapshot()
        log.info("%s: %.1f fps%s, latency p50 %.0f ms p95 %.0f ms, faces in %d/%d frames, %d dropped",
                 self._position(s.frames_out), s.fps, self._eta(s.frames_out, s.fps), s.latency_p50_ms, s.latency_p95_ms, s.faces_found, s.frames_out, s.dropped)

    def _first_frame_line(self, now: float) -> str:
        first = now - self._started
        detail = f"{self._startup}, first frame {first:.1f} s" if self._startup else f"first frame {first:.1f} s after the set-up"
        return f"tracking: first frame done {now - self._launch:.1f} s after launch ({detail})"

    def _position(self, done: int) -> str:
        if not self.total:
            return f"frame {done}"
        return f"frame {done}/{self.total} ({100 * done / self.total:.0f} %)"

    def _eta(self, done: int, fps: float) -> str:
        if not self.total or fps <= 0:
            return ""
        left = max(0.0, (self.total - done) / fps)
        return f", ETA {int(left // 60)}:{int(left % 60):02d}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
