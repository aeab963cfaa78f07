"""Can Qt's GUI start here? Checked before the viewer makes its QApplication.

Qt cannot report a platform plugin that fails to load: it prints a few lines and aborts the
process (SIGABRT). On Linux that happens wherever a system library its xcb plugin links is
missing, which is normal on Ubuntu: desktops lack libxcb-cursor0, servers most of the X
libraries. So ``gui_problem`` first starts a QGuiApplication in a child process (about 0.1 s of
start-up), with QT_DEBUG_PLUGINS=1 so that Qt passes on the dynamic loader's
"libX.so.N: cannot open shared object file", and turns a failure into one sentence: the missing
library, its Debian/Ubuntu package, the one apt command that installs every library Qt's window
needs (the loader names only the first one missing), and ``--headless``. Without a display it
says so without starting anything. The offscreen and minimal platforms need only the libraries
of Qt's GUI module itself, so importing PyQt6.QtGui checks them, in this process.

opencv-contrib-python points QT_QPA_PLATFORM_PLUGIN_PATH and QT_QPA_FONTDIR at its own Qt 5
plugins and fonts when cv2 is imported. PyQt6's Qt 6 has no use for them, and its error message
would name cv2's folder: ``drop_cv2_qt_settings`` removes them (``require_gui`` does, for this
process and the check's child).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from tracker.errors import TrackerError

PROBE = "from PyQt6.QtGui import QGuiApplication; QGuiApplication(['n2f-qt-check'])"
PROBE_TIMEOUT_S = 30.0
IMPORT_ONLY_PLATFORMS = ("offscreen", "minimal")  # no system libraries beyond Qt's GUI module's
CV2_QT_SETTINGS = ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR")
# lines of a failed start left out of the message: QT_DEBUG_PLUGINS's plugin scan, Qt's closing
# boilerplate, and the xcb-cursor hint that Qt prints after any failure of the xcb plugin
QT_CHATTER = (" ", "\t", "{", "}", "]", "qt.core.", "qt.qpa.plugin: From 6.5.0", "This application failed to start", "Available platform plugins")
MISSING_LIBRARY = re.compile(r"(lib[\w.+-]+?\.so(?:\.\d+)*): cannot open shared object file")

# the Debian/Ubuntu package of every system library that Qt's GUI module, its xcb and wayland
# platform plugins and their GL integrations link (PyQt6-Qt6 6.11; `dpkg -S` on Debian 12)
DEBIAN_PACKAGES = {
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-glx.so.0": "libxcb-glx0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb.so.1": "libxcb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libz.so.1": "zlib1g",
    "libzstd.so.1": "libzstd1",
}
# what the apt command installs: the libraries of Qt's window (GUI module, xcb plugin, GL) that
# a machine without a desktop, or an Ubuntu desktop, may lack
GUI_PACKAGES = (
    "libxcb-cursor0", "libxcb-icccm4", "libxcb-image0", "libxcb-keysyms1", "libxcb-randr0", "libxcb-render-util0", "libxcb-shape0",
    "libxcb-shm0", "libxcb-sync1", "libxcb-util1", "libxcb-xfixes0", "libxcb-xkb1", "libx11-xcb1", "libxkbcommon-x11-0", "libxkbcommon0",
    "libegl1", "libgl1", "libfontconfig1",
)
HEADLESS_HINT = "or track without a window: --headless"


def drop_cv2_qt_settings(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Remove CV2_QT_SETTINGS from ``environ`` where they point into cv2's package folder (cv2 is
    imported first when it is installed, so that it cannot set them again later) -> their names."""
    spec = importlib.util.find_spec("cv2")
    if spec is None or spec.origin is None:
        return []
    import cv2  # noqa: F401  (sets them on its first import)

    folder = Path(spec.origin).resolve().parent
    dropped = [name for name in CV2_QT_SETTINGS if name in environ and Path(environ[name]).resolve().is_relative_to(folder)]
    for name in dropped:
        del environ[name]
    return dropped


def platform_names(environ: Mapping[str, str]) -> list[str]:
    """The platforms Qt tries, in order, as QT_QPA_PLATFORM names them ("wayland;xcb",
    "xcb:option"), or [] for Qt's default."""
    return [entry.split(":")[0].strip() for entry in environ.get("QT_QPA_PLATFORM", "").split(";") if entry.strip()]


def gui_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """None where Qt's GUI can start with ``environ`` (default: this process's), else what stops
    it and what to do, in one line. Other systems than Linux are not checked."""
    environ = dict(os.environ if environ is None else environ)
    drop_cv2_qt_settings(environ)
    if not sys.platform.startswith("linux"):
        return None
    platforms = platform_names(environ)
    if platforms and platforms[0] in IMPORT_ONLY_PLATFORMS:
        try:
            import PyQt6.QtGui  # noqa: F401
        except ImportError as error:
            return failure_message(str(error), platforms[0])
        return None
    no_display = display_problem(platforms, environ)
    if no_display is not None:
        return no_display
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], env={**environ, "QT_DEBUG_PLUGINS": "1"}, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"the viewer cannot start: Qt's GUI did not start within {PROBE_TIMEOUT_S:.0f} s; {HEADLESS_HINT}"
    if done.returncode == 0:
        return None
    return failure_message(done.stdout + done.stderr, platforms[0] if platforms else None, environ.get("DISPLAY"))


def display_problem(platforms: list[str], environ: Mapping[str, str]) -> str | None:
    """What to do when the platform Qt will use needs a display that the environment lacks:
    X (xcb) without DISPLAY, or Qt's default (X or Wayland) with neither DISPLAY nor WAYLAND_DISPLAY."""
    if platforms == ["xcb"] and not environ.get("DISPLAY"):
        unset = "DISPLAY is not set"
    elif not platforms and not environ.get("DISPLAY") and not environ.get("WAYLAND_DISPLAY"):
        unset = "neither DISPLAY nor WAYLAND_DISPLAY is set"
    else:
        return None
    return (f"the viewer needs a display and {unset}: run it in a desktop session, or under xvfb-run (Debian/Ubuntu package xvfb) "
            f"on a machine without one, {HEADLESS_HINT}")


def failure_message(output: str, platform: str | None, display: str | None = None) -> str:
    """One line from what a Qt start that failed printed (``output``): the missing library and
    its package, the display that refused, or Qt's last message."""
    missing = MISSING_LIBRARY.search(output)
    if missing:
        return missing_library_message(missing.group(1))
    if "could not connect to display" in output:
        return f"the viewer cannot open a window: Qt could not connect to the X display {display!r} (is the X server running?); {HEADLESS_HINT}"
    said = "; ".join(line.strip() for line in output.splitlines() if line.strip() and not line.startswith(QT_CHATTER))
    where = f"the {platform} platform" if platform else "its default platform"
    return f"the viewer cannot start: Qt's GUI failed to start on {where} ({said or 'no message'}); {HEADLESS_HINT}"


def missing_library_message(library: str) -> str:
    """The one-line advice for a system library Qt's GUI cannot load."""
    package = DEBIAN_PACKAGES.get(library)
    if package is None:
        return (f"the viewer cannot start: Qt's GUI needs {library}, which is not installed; find its package with "
                f"`apt-file search {library}` (Debian/Ubuntu) and install it, {HEADLESS_HINT}")
    packages = " ".join(dict.fromkeys((package, *GUI_PACKAGES)))
    return (f"the viewer cannot start: Qt's GUI needs {library}, which is not installed (Debian/Ubuntu package {package}); "
            f"install it and the other libraries of Qt's window with `sudo apt install {packages}`, {HEADLESS_HINT}")


def require_gui() -> None:
    """Drop cv2's Qt settings from this process's environment, then raise TrackerError with
    ``gui_problem``'s message if Qt's GUI cannot start; call it before making a QApplication."""
    drop_cv2_qt_settings()
    problem = gui_problem()
    if problem is not None:
        raise TrackerError(problem)
