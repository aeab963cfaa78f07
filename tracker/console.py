"""What the programs print and how they stop: the project's own log lines, third-party lines only
when asked, and Ctrl-C / SIGTERM as a KeyboardInterrupt from the first moment.

    with interruptible():                                       # first thing in a program's main()
        ...
    configure_logging(verbose=args.verbose, quiet=args.quiet)   # once, right after parsing
    mute = NativeMute(); ...; mute.release()                     # while a graph's C++ threads print

By default (``verbose=False``) a run prints the project's own lines (loggers ``tracker``,
``app``, ``train``: INFO, or WARNING with ``quiet``) and hides third-party ones:
- other libraries' Python log records below WARNING, and their Python warnings;
- OpenCV's own warnings and FFmpeg's decoder chatter (``cv2.setLogLevel``, OPENCV_FFMPEG_LOGLEVEL);
- the C++ lines MediaPipe (TFLite, absl) writes straight to file descriptor 2 when a graph starts
  ("Created TensorFlow Lite XNNPACK delegate", "All log messages before absl::InitializeLog()",
  "Feedback manager requires ...", "Using NORM_RECT without IMAGE_DIMENSIONS"). No setting
  reaches them (GLOG_minloglevel and TF_CPP_MIN_LOG_LEVEL were tried on mediapipe 0.10.21: no
  effect), so ``configure_logging`` moves Python's own stderr onto a private copy of descriptor 2,
  and ``NativeMute`` points descriptor 2 at /dev/null while a graph starts (its threads print
  after its creation returns, up to its first face). Python's lines (logging, tracebacks,
  progress) never pass through descriptor 2 then, so none is lost while it is muted; a native
  crash message outside those spans still reaches the terminal.

Muting only happens where ``configure_logging`` found ``sys.stderr`` to be the process's own
(``sys.__stderr__``) and logging not configured yet: a test harness or an embedding program keeps
every line and its own log levels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator

PROJECT_LOGGERS = ("tracker", "app", "train")

_lock = threading.Lock()
_terminal_fd: int | None = None  # a private copy of descriptor 2 once muting is possible
_muted = 0  # NativeMute instances holding the redirection


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Log levels for a program run: the project's own loggers at INFO (WARNING with ``quiet``),
    third-party ones at WARNING; ``verbose``: everything at INFO, nothing muted. Nothing changes
    where logging is configured already (an embedding program, a test harness), as
    ``logging.basicConfig`` would leave it."""
    global _terminal_fd
    if logging.getLogger().handlers:
        return
    if not verbose and _terminal_fd is None and sys.stderr is sys.__stderr__ and sys.stderr is not None:
        _terminal_fd = os.dup(2)
        sys.stderr = open(_terminal_fd, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace", closefd=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
    if verbose:
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read when FFmpeg first opens a file
    if "cv2" in sys.modules:
        sys.modules["cv2"].setLogLevel(2)  # LOG_LEVEL_ERROR
    else:
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


class NativeMute:
    """Descriptor 2 points at /dev/null from creation until ``release()`` (idempotent); mutes
    held at once (threads, nesting) share one redirection. A no-op unless ``configure_logging``
    made muting possible."""

    def __init__(self) -> None:
        global _muted
        self.active = _terminal_fd is not None
        if not self.active:
            return
        with _lock:
            if _muted == 0:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                os.close(null)
            _muted += 1

    def release(self) -> None:
        global _muted
        if not self.active:
            return
        with _lock:
            if not self.active:
                return
            self.active = False
            _muted -= 1
            if _muted == 0:
                os.dup2(_terminal_fd, 2)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Inside, Ctrl-C raises KeyboardInterrupt even where the process started with SIGINT ignored
    (a script's background job inherits that), and SIGTERM raises it too, so a program stops the
    same clean way on either; the previous handlers come back afterwards."""
    previous = {sig: signal.signal(sig, handler) for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _interrupt))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def seconds_since_launch() -> float:
    """How long this process has run (Linux: from /proc, the interpreter's own start-up included;
    elsewhere: since this module was imported)."""
    try:
        with open("/proc/self/stat", "rb") as stat, open("/proc/uptime", "rb") as uptime:
            started_ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])
            return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()
