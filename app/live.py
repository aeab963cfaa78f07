"""``python -m app.live``: track faces live from a camera, a video file, a network stream, an image folder or the demo.

    python -m app.live --demo                                      # no camera: a rendered head performs (the viewer window)
    python -m app.live --camera 0                                  # the viewer window
    python -m app.live --camera 0 --virtualcam --virtualcam-mode key   # feed OBS: mesh on a key colour
    python -m app.live --video clip.mp4 --headless --record take.npz --max-frames 300
    python -m app.live --video clip.mp4 --screenshot shot.png --max-frames 60
    python -m app.live rtsp://host/stream --headless --checkpoint my_n2fnet.pt --device cuda
    python -m app.live --camera 0 --identity take.npz               # reuse the identity calibrated in a take
    python -m app.live --camera 0 --flame-dir ~/flame               # FLAME, fitted from its mean face (no FLAME network needed)
    python -m app.live --camera 0 --vmc 127.0.0.1:39539             # drive a VSeeFace / VNyan / Warudo avatar
    python -m app.live --camera 0 --livelink 192.168.1.20 --osc :9000   # Unreal's Live Link, raw values over OSC

Ctrl-C (or SIGTERM) stops cleanly: frames already in the pipeline finish, the recording is
finalised, and the run's figures are printed (rc 130). Ctrl-C during start-up stops with rc 2 and
leaves nothing behind. An error stops the run the same way: the frames tracked before it are
recorded, the figures printed, then the error (rc 2).

Start-up: the signal handlers go in first, then the command line is parsed from light modules
(``--help`` and bad options answer before torch, MediaPipe or OpenVINO load), then the heavy
modules are imported; the first tracked frame's log line says what the time went to.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tracker.console import configure_logging, interruptible, seconds_since_launch
from tracker.errors import TrackerError
from tracker.live.options import (
    MODES,
    TrackerOptions,
    add_tracker_arguments,
    non_negative_int,
    options_from_args,
    positive_float,
    positive_int,
)
from tracker.live.sources import BAD_FRAME_POLICIES, camera_index, open_source
from tracker.outputs.overlay import (
    MESH_COLOUR,
    MESH_OPACITY,
    MESH_STYLES,
    SHADE_RESOLUTION,
    parse_colour,
    parse_opacity,
)
from tracker.outputs.streaming import (
    LIVELINK_PORT,
    OSC_PORT,
    VMC_NAMES,
    VMC_PORT,
    LiveLinkSink,
    OscSink,
    StreamSink,
    VmcSink,
    parse_endpoint,
)
from tracker.takes.recording import check_take_path, journal_path

if TYPE_CHECKING:
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.pipeline import StatsSnapshot
    from tracker.live.sinks import RecordingSink
    from tracker.live.sources import FrameSource

log = logging.getLogger("app.live")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.live", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("source (one of)")
    source.add_argument("source", nargs="?", help="camera index, video file, URL (rtsp/http/srt/...) or image folder")
    source.add_argument("--camera", type=int, help="camera index (0: the first webcam)")
    source.add_argument("--video", help="video file or image folder")
    source.add_argument("--url", help="network stream URL")
    source.add_argument("--demo", action="store_true",
                        help="no camera needed: an ICT head rendered on this machine performs every ARKit shape, blinks, winks, head turns and speech (about 65 s; --loop repeats it)")
    source.add_argument("--pace", choices=("auto", "realtime", "every-frame"), default="auto",
                        help="files: realtime plays them at their own frame rate, dropping frames the tracker cannot keep up with; every-frame "
                        "tracks every frame as fast as possible; auto (default): realtime in the viewer, every-frame headless")
    source.add_argument("--loop", action="store_true", help="files: start over at the end")
    source.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    source.add_argument("--on-bad-frame", choices=BAD_FRAME_POLICIES, default="skip",
                        help="an image of a folder that cannot be decoded: skip it with a warning (default) or stop there")

    model = parser.add_argument_group("model")
    refine = parser.add_argument_group("refinement and identity")
    add_tracker_arguments(model, refine)
    model.add_argument("--cue", default="mediapipe", help="geometry cue: mediapipe (embedded), mediapipe+farl, pixel3dmm, pixel3dmm+farl")
    model.add_argument("--pixel3dmm-weights", help="Pixel3DMM normal-network weights (pixel3dmm cues)")
    model.add_argument("--farl-weights", help="FaRL face-parsing weights (+farl cues)")
    model.add_argument("--max-faces", type=int, default=1, help="faces tracked per frame (default: 1)")
    model.add_argument("--focal", type=positive_float, help="the camera's focal length in pixels, if known (default: the training camera's, focal_mean x max(W, H))")
    refine.add_argument("--identity", metavar="TAKE", help="reuse the calibrated identity of a recorded take (.npz): every tracked face uses it, fixed")
    refine.add_argument("--identity-track", type=non_negative_int, metavar="N", help="the track of --identity to take it from (default: the first whose identity is locked, else given)")

    run = parser.add_argument_group("run")
    run.add_argument("--headless", action="store_true", help="no window: track, record, print figures")
    run.add_argument("--record", help="record the take to this .npz (crash-safe journal while running)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --record file")
    run.add_argument("--no-smoothing", action="store_true", help="switch off the One-Euro smoothing of parameters and crop")
    run.add_argument("--mode", choices=MODES, default="async", help="async: stages overlap (default); sequential: one frame at a time")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: small ops stall in a busy thread pool)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--verbose", action="store_true",
                     help="also show the third-party libraries' log lines (MediaPipe/TFLite/absl, OpenCV, FFmpeg), hidden by default")

    view = parser.add_argument_group("viewer")
    view.add_argument("--screenshot", help="save a screenshot of the window when the source ends (or --max-frames), then quit")
    view.add_argument("--mesh-style", choices=MESH_STYLES, default="shaded",
                      help="mesh drawn over the video (key M): shaded, or wireframe (lines every centimetre across and up the head, and its contours)")
    view.add_argument("--mesh-color", type=parse_colour, default=MESH_COLOUR, metavar="COLOR",
                      help="the mesh's colour over the video and in the 3D view: a CSS colour name (skyblue, orange, white, ...) or #rrggbb "
                      "(default: skyblue); the wireframe draws it darkened")
    view.add_argument("--mesh-opacity", type=parse_opacity, default=MESH_OPACITY, metavar="OPACITY",
                      help=f"the mesh's opacity over the video, from 0 (invisible) to 1 (opaque) (default: {MESH_OPACITY})")
    view.add_argument("--full-res-overlay", action="store_true",
                      help=f"draw the mesh over the video at full resolution (more CPU on the GUI thread; "
                      f"default: rasterised at most {SHADE_RESOLUTION} px across, upscaled)")
    view.add_argument("--no-landmarks", action="store_true", help="start without the 68 landmarks drawn (key L)")
    view.add_argument("--software-3d", action="store_true", help="3D view rendered by the project's rasteriser instead of OpenGL")
    view.add_argument("--record-dir", default="takes", help="folder for takes started with the R key (default: takes)")

    cam = parser.add_argument_group("virtual camera (OBS, Zoom, ...; pyvirtualcam)")
    cam.add_argument("--virtualcam", action="store_true", help="send the tracked video to a virtual camera (key V in the viewer)")
    cam.add_argument("--virtualcam-mode", choices=("overlay", "key"), default="overlay", help="overlay: video with the mesh; key: the mesh alone on a key colour")
    cam.add_argument("--virtualcam-size", default=None, help="WxH sent (default: the source's size)")
    cam.add_argument("--virtualcam-fps", type=float, help="frame rate sent (default: the source's, else 30)")
    cam.add_argument("--virtualcam-device", help="virtual camera device (e.g. /dev/video10); default: the first one")
    cam.add_argument("--virtualcam-backend", help="pyvirtualcam backend: v4l2loopback, obs, unitycapture (default: the first that works)")

    streams = parser.add_argument_group("avatar streams (UDP; docs/streaming.md documents the formats)")
    streams.add_argument("--vmc", metavar="HOST:PORT", help=f"send the largest face over the VMC protocol (VSeeFace, VNyan, Warudo; key K in the viewer); "
                         f"HOST alone takes port {VMC_PORT}, :PORT host 127.0.0.1")
    streams.add_argument("--vmc-names", choices=VMC_NAMES, default="arkit",
                         help="arkit: the 52 ARKit blendshape names, for perfect-sync avatars (default); vrm: the VRM proxy keys A I U E O Blink_L Blink_R Joy ...")
    streams.add_argument("--vmc-mirror", action=argparse.BooleanOptionalAction, default=True,
                         help="VMC: move the avatar as your mirror image, as VTuber apps show it (default: on); --no-vmc-mirror: as a puppet, its left is your left")
    streams.add_argument("--livelink", metavar="HOST:PORT", help=f"send Live Link Face packets to Unreal (key U in the viewer); default port {LIVELINK_PORT}")
    streams.add_argument("--livelink-subject", default="N2F", help="the Live Link subject name Unreal shows (default: N2F)")
    streams.add_argument("--profile", metavar="FILE",
                         help="your ARKit profile (JSON: per-shape neutral, deadzone, curve, gain, offset; the README, Your ARKit profile): applied to the "
                         "streams, the plots and the recorded weights (a take keeps the raw ones too); written when a neutral calibration ends")
    streams.add_argument("--calibrate-neutral", type=positive_float, metavar="SECONDS",
                         help="hold a neutral face for SECONDS from the first face on: your resting ARKit weights then read 0 "
                         "(saved to --profile when given; key N in the viewer starts one at any time)")
    streams.add_argument("--osc", metavar="HOST:PORT", help=f"send every face's raw head-model parameters and pose as OSC under /n2f/... (key O in the viewer); default port {OSC_PORT}")
    return parser


def source_spec(args: argparse.Namespace) -> int | str | None:
    """The source the command line names (None: ``--demo``); a TrackerError unless exactly one."""
    given = [value for value in (args.source, args.camera, args.video, args.url) if value is not None] + ([None] if args.demo else [])
    if len(given) != 1:
        raise TrackerError("give exactly one source: --camera N, --video PATH, --url URL, --demo or a positional SOURCE")
    return given[0]


def open_frames(args: argparse.Namespace, spec: int | str | None, viewer: bool) -> FrameSource:
    """The opened source (not started): ``open_source(spec)``, or the demo (``tracker.live.demo``)
    when ``spec`` is None."""
    if spec is None:
        from tracker.head_models import load_head_model
        from tracker.live.demo import open_demo_source

        return open_demo_source(load_head_model("ict", args.ict_model), realtime=realtime(args, spec, viewer), loop=args.loop)
    return open_source(spec, realtime=realtime(args, spec, viewer), loop=args.loop, on_bad_frame=args.on_bad_frame)


def realtime(args: argparse.Namespace, spec: int | str | None, viewer: bool) -> bool | None:
    """open_source's ``realtime`` for the --pace setting (None for live sources, always realtime;
    ``spec`` None: the demo, paced like a file)."""
    if spec is not None and (camera_index(spec) is not None or "://" in str(spec)):
        if args.pace != "auto":
            raise TrackerError(f"--pace {args.pace} applies to files and folders; {spec} is live and always keeps the newest frame")
        return None
    return args.pace == "realtime" or (args.pace == "auto" and viewer)


def tracker_options(args: argparse.Namespace) -> TrackerOptions:
    """The command line's tracker settings (checked: this imports torch)."""
    return options_from_args(
        args,
        cue=args.cue,
        pixel3dmm_weights=args.pixel3dmm_weights,
        farl_weights=args.farl_weights,
        max_faces=args.max_faces,
        smoothing=not args.no_smoothing,
        focal=args.focal,
        identity_take=args.identity,
        identity_track=args.identity_track,
        arkit_profile=args.profile,
        calibrate_neutral=args.calibrate_neutral,
    )


def start_torch(args: argparse.Namespace) -> None:
    """Import torch and give it ``--threads`` CPU threads."""
    import torch

    torch.set_num_threads(max(1, args.threads))


def summary(stats: StatsSnapshot, source: FrameSource, recorded: Path | None) -> str:
    stages = ", ".join(f"{name} {ms:.1f}" for name, ms in stats.stage_ms.items())
    skipped = f", {source.frames_skipped} bad frames skipped" if source.frames_skipped else ""
    lines = [
        f"frames: {stats.frames_out} tracked of {stats.frames_read} read, {stats.dropped} dropped by the source{skipped}",
        f"faces found in {stats.faces_found} frames ({100 * stats.detection_rate:.1f}%)",
        f"speed: {stats.fps:.1f} fps (last {min(stats.frames_out, 120)} frames), latency (capture -> result) p50 {stats.latency_p50_ms:.0f} ms, p95 {stats.latency_p95_ms:.0f} ms; processing p50 {stats.processing_p50_ms:.0f} ms, p95 {stats.processing_p95_ms:.0f} ms",
        f"stage ms per frame: {stages}",
    ]
    if stats.frame_errors:
        lines.insert(2, f"frame errors in {stats.frame_errors} frames: a face left out each time, never recorded (non-finite network or refinement output; warnings above)")
    if recorded is not None:
        journal = journal_path(recorded)
        if recorded.exists() and not journal.exists():
            lines.append(f"recorded: {recorded}")
        elif journal.exists():
            lines.append(f"recording kept in its journal {journal}: finalise it with `python -m tracker.takes recover {journal}`")
    return "\n".join(lines)


def virtualcam_factory(args: argparse.Namespace, tracker: FaceTracker, source) -> Callable[[], object]:
    """A function that opens the virtual camera sink with the command line's settings."""
    from app.virtualcam import VirtualCameraSink

    if args.virtualcam_size:
        try:
            width, height = (int(v) for v in args.virtualcam_size.lower().split("x"))
        except ValueError:
            raise TrackerError(f"--virtualcam-size must look like 1280x720, got {args.virtualcam_size!r}") from None
    else:
        width, height = source.size
    fps = args.virtualcam_fps or source.fps or 30.0
    return lambda: VirtualCameraSink(
        tracker.head.render_faces, width, height, fps, mode=args.virtualcam_mode, style=args.mesh_style, colour=args.mesh_color,
        opacity=args.mesh_opacity, landmarks=not args.no_landmarks, device=args.virtualcam_device, backend=args.virtualcam_backend,
    )


def stream_endpoints(args: argparse.Namespace) -> dict[str, tuple[str, int]]:
    """{stream label: (host, port)} of the avatar streams given on the command line (bad addresses raise TrackerError)."""
    given = ((VmcSink.label, args.vmc, VMC_PORT, "--vmc"), (LiveLinkSink.label, args.livelink, LIVELINK_PORT, "--livelink"), (OscSink.label, args.osc, OSC_PORT, "--osc"))
    return {label: parse_endpoint(text, port, option) for label, text, port, option in given if text is not None}


def stream_factories(args: argparse.Namespace, endpoints: dict[str, tuple[str, int]], source) -> dict[str, Callable[[], StreamSink]]:
    """{stream label: a function that opens its sink} for ``endpoints`` with the command line's settings."""
    openers = {
        VmcSink.label: lambda host, port: VmcSink(host, port, names=args.vmc_names, mirror=args.vmc_mirror),
        LiveLinkSink.label: lambda host, port: LiveLinkSink(host, port, fps=source.fps or 30.0, subject=args.livelink_subject),
        OscSink.label: lambda host, port: OscSink(host, port),
    }
    return {label: (lambda opener=openers[label], host=host, port=port: opener(host, port)) for label, (host, port) in endpoints.items()}


class StartupClock:
    """What the start-up's time went to: ``mark(name)`` closes a phase that began at the previous
    mark (the first at the process's launch); ``describe()`` -> "imports 1.9 s, tracker 0.6 s"."""

    def __init__(self) -> None:
        self.launch = time.monotonic() - seconds_since_launch()
        self._last = self.launch
        self.phases: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.phases.append((name, now - self._last))
        self._last = now

    def describe(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phases)


def run_headless(args: argparse.Namespace, clock: StartupClock) -> int:
    spec = source_spec(args)
    endpoints = stream_endpoints(args)
    if args.record:
        check_take_path(args.record, args.overwrite)  # before the set-up, not after the tracking
    start_torch(args)  # the heavy imports begin here, once the cheap checks passed
    options = tracker_options(args)
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.pipeline import Pipeline, PipelineStats
    from tracker.live.sinks import ProgressLog, RecordingSink

    clock.mark("Python and imports")
    source = open_frames(args, spec, viewer=False)
    clock.mark("source")
    tracker, recording, sinks = None, None, []
    try:
        tracker = FaceTracker.from_options(options)
        clock.mark("tracker set-up")
        if args.virtualcam:
            sinks.append(virtualcam_factory(args, tracker, source)())
        for open_stream in stream_factories(args, endpoints, source).values():
            sinks.append(open_stream())
        stats = PipelineStats()
        if not args.quiet:
            total = None if args.loop else _total(source, args.max_frames)
            sinks.append(ProgressLog(stats, total=total, launch=clock.launch, startup=clock.describe()))
        if args.record:  # opened last: a set-up step that fails leaves no journal behind
            recording = RecordingSink(args.record, tracker.head, source=source.name, overwrite=args.overwrite, metadata={**options.recording_metadata(), **tracker.fit_metadata()})
            sinks.insert(0, recording)
        pipeline = Pipeline(source, tracker, sinks, mode=args.mode, max_frames=args.max_frames, stats=stats)
    except BaseException:
        _abandon(source, tracker, recording, sinks)
        raise
    interrupted, error = False, None
    try:
        pipeline.run()
    except KeyboardInterrupt:
        interrupted = True
    except Exception as failure:  # reported after the figures of the frames tracked before it
        error = failure
    finally:
        pipeline.stop()
        tracker.close()
    print(summary(pipeline.stats.snapshot(), source, recording.path if recording else None))
    for sink in sinks:
        if isinstance(sink, StreamSink):
            print(sink.describe())
    if error is not None:
        raise error
    return 130 if interrupted else 0


def _total(source: FrameSource, max_frames: int | None) -> int | None:
    """Frames the run will track, when known (a file's declared count, or --max-frames)."""
    counts = [count for count in (source.frame_count, max_frames) if count is not None]
    return min(counts) if counts else None


def _abandon(source: FrameSource, tracker: FaceTracker | None, recording: RecordingSink | None, sinks: list) -> None:
    """Undo a set-up that failed: the empty recording's journal removed, sinks, tracker and source closed."""
    if recording is not None:
        recording.discard()
    for sink in sinks:
        if sink is not recording and hasattr(sink, "close"):
            sink.close()
    if tracker is not None:
        tracker.close()
    source.stop()


def run_viewer(args: argparse.Namespace, clock: StartupClock) -> int:
    from PyQt6 import QtCore, QtWidgets

    from app.viewer import ResultBridge, ViewerOptions, ViewerWindow
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.pipeline import Pipeline
    from tracker.live.sinks import SwitchableSink

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["n2f-tracker"])
    spec = source_spec(args)
    endpoints = stream_endpoints(args)
    if args.record:
        check_take_path(args.record, args.overwrite)
    start_torch(args)
    tracker_settings = tracker_options(args)
    source = open_frames(args, spec, viewer=True)
    clock.mark("Python, imports and source")
    tracker = FaceTracker.from_options(tracker_settings)
    clock.mark("tracker set-up")
    log.info("start-up: %s", clock.describe())
    bridge, recording, virtualcam = ResultBridge(), SwitchableSink(), SwitchableSink()
    streams = {label: SwitchableSink() for label in (VmcSink.label, LiveLinkSink.label, OscSink.label)}  # switched with K, U, O
    pipeline = Pipeline(source, tracker, [recording, virtualcam, *streams.values(), bridge], mode=args.mode, max_frames=args.max_frames)
    options = ViewerOptions(
        source_name=source.name,
        checkpoint=str(tracker_settings.checkpoint_path()),
        device=args.device,
        mesh_style=args.mesh_style,
        mesh_colour=args.mesh_color,
        mesh_opacity=args.mesh_opacity,
        shade_resolution=None if args.full_res_overlay else SHADE_RESOLUTION,
        landmarks=not args.no_landmarks,
        record_path=args.record,
        record_dir=args.record_dir,
        overwrite=args.overwrite,
        record_metadata={**tracker_settings.recording_metadata(), **tracker.fit_metadata()},
        software_3d=args.software_3d,
        screenshot_at_end=args.screenshot,
        virtualcam=virtualcam_factory(args, tracker, source),
        virtualcam_on=args.virtualcam,
        streams=stream_factories(args, endpoints, source),
        streams_on=tuple(endpoints),
    )
    window = ViewerWindow(pipeline, bridge, recording, virtualcam, options, streams=streams)
    window.fit_to_screen()
    window.show()
    pipeline.start()
    interrupted = []

    def close_on_signal(signum, frame) -> None:  # runs between Python bytecodes of a Qt slot
        interrupted.append(signum)
        QtCore.QTimer.singleShot(0, window.close)

    previous = {sig: signal.signal(sig, close_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        app.exec()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        window.close()
        pipeline.stop()
        tracker.close()
    print(summary(pipeline.stats.snapshot(), source, None))
    print(f"3D view: {window.mesh_view.kind}")
    error = window.error
    if error is None:
        try:
            pipeline.wait(0)  # an error of the shutdown itself, e.g. a take that could not be written
        except Exception as failure:
            error = failure
    if error is not None:
        raise TrackerError(f"tracking stopped: {error}") from error
    return 130 if interrupted else 0


def main(argv: list[str] | None = None) -> int:
    with interruptible():  # before the heavy imports, which take the first seconds
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    try:
        clock = StartupClock()
        args = build_parser().parse_args(argv)
        configure_logging(verbose=args.verbose, quiet=args.quiet)
        if args.headless and args.screenshot:
            raise TrackerError("--screenshot needs the window: leave out --headless (use xvfb-run on a machine without a display)")
        if not args.headless:
            from app.qt_platform import require_gui

            require_gui()  # where Qt's platform plugin cannot start, Qt aborts the process: say why and stop first
        if args.headless:
            return run_headless(args, clock)
        return run_viewer(args, clock)
    except TrackerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # tracking had not started (once it runs, Ctrl-C is handled there)
        print("error: interrupted during start-up, before tracking began: nothing was tracked or recorded", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
