"""Qt that cannot start is a clear error, never a crash: ``app.qt_platform``'s check before the
viewer's QApplication, and the test suite's skip (``qt_gui`` in tests/conftest.py).

A missing system library is reproduced for this module's own child processes only, two ways:
    portable  a private copy of PyQt6's xcb platform plugin, found first through QT_PLUGIN_PATH,
              whose NEEDED entry libxcb-cursor.so.0 is renamed (same length) to
              libxcb-cursor.so.9, which no system has
    faithful  libxcb-cursor.so.0 itself hidden in a private mount namespace (an overlay whose
              whiteout hides the file): the real name, so the message names its Debian package;
              needs root, unshare and overlayfs, skipped without them
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from app import qt_platform
from app.qt_platform import (
    DEBIAN_PACKAGES,
    GUI_PACKAGES,
    drop_cv2_qt_settings,
    gui_problem,
    missing_library_message,
)

PROJECT = Path(__file__).resolve().parents[2]
MISSING = "libxcb-cursor.so.9"  # what the portable copy of the plugin needs instead of libxcb-cursor.so.0


def unused_display() -> str:
    """An X display name that no server answers."""
    number = next(n for n in range(150, 250) if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists())
    return f":{number}"


@pytest.fixture(scope="module")
def broken_plugin_env(tmp_path_factory) -> dict[str, str]:
    """This process's environment plus QT_PLUGIN_PATH to a copy of PyQt6's xcb plugin that needs
    MISSING, and a DISPLAY (the plugin fails to load before Qt connects to it)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Qt's xcb platform plugin is Linux's")
    import PyQt6

    qt = Path(PyQt6.__file__).parent / "Qt6"
    data = (qt / "plugins" / "platforms" / "libqxcb.so").read_bytes()
    needed = b"libxcb-cursor.so.0\0"
    if data.count(needed) != 1:
        pytest.skip("this PyQt6's xcb plugin does not name libxcb-cursor.so.0 once")
    root = tmp_path_factory.mktemp("qt")
    (root / "plugins" / "platforms").mkdir(parents=True)
    (root / "lib").symlink_to(qt / "lib")  # the plugin's RUNPATH, $ORIGIN/../../lib: PyQt6's Qt libraries
    (root / "plugins" / "platforms" / "libqxcb.so").write_bytes(data.replace(needed, MISSING.encode() + b"\0"))
    return {**os.environ, "QT_PLUGIN_PATH": str(root / "plugins"), "QT_QPA_PLATFORM": "xcb", "DISPLAY": os.environ.get("DISPLAY") or unused_display()}


def without_library(name: str, tmp_path: Path) -> list[str]:
    """A command prefix that runs its command with the system library ``name`` hidden: a private
    mount namespace (``unshare -m``) where the library's folder is an overlay of itself under a
    whiteout of ``name``. Skips the test where that cannot be done."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ldconfig") is None:
        pytest.skip("hiding a system library needs root, unshare and ldconfig")
    listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    found = re.search(rf"^\s*{re.escape(name)} \(.*\) => (\S+)$", listed, re.MULTILINE)
    if found is None:
        pytest.skip(f"{name} is not installed here")
    folder = Path(found.group(1)).resolve().parent
    whiteout = tmp_path / "whiteout"
    whiteout.mkdir()
    try:
        os.mknod(whiteout / name, stat.S_IFCHR | 0o600, os.makedev(0, 0))  # overlayfs's whiteout: the file is not there
    except OSError as error:
        pytest.skip(f"cannot make an overlayfs whiteout: {error}")
    prefix = ["unshare", "-m", "sh", "-c", f'mount -t overlay overlay -o lowerdir={whiteout}:{folder} {folder} && exec "$@"', "sh"]
    if subprocess.run([*prefix, "test", "!", "-e", str(folder / name)], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace with overlayfs here")
    return prefix


def run_live(command_prefix: list[str], env: dict[str, str], video: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*command_prefix, sys.executable, "-m", "app.live", "--video", str(video), "--max-frames", "2"],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT, env=env)


@pytest.fixture(scope="module")
def video(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos" / "WolfgangLanger_Pexels.mp4"


def test_a_missing_library_stops_the_viewer_with_one_line(broken_plugin_env: dict[str, str], video: Path) -> None:
    done = run_live([], broken_plugin_env, video)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.splitlines() == [
        f"error: the viewer cannot start: Qt's GUI needs {MISSING}, which is not installed; find its package with `apt-file search {MISSING}` "
        "(Debian/Ubuntu) and install it, or track without a window: --headless"
    ], done.stderr


def test_the_missing_library_is_named_with_its_debian_package(tmp_path: Path, video: Path) -> None:
    """libxcb-cursor.so.0 really absent, as on a stock Ubuntu desktop: before the check Qt aborted
    the process (SIGABRT) naming cv2's plugin folder."""
    prefix = without_library("libxcb-cursor.so.0", tmp_path)
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "DISPLAY": os.environ.get("DISPLAY") or unused_display()}
    done = run_live(prefix, env, video)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: the viewer cannot start: Qt's GUI needs libxcb-cursor.so.0, which is not installed (Debian/Ubuntu package libxcb-cursor0)")
    assert f"`sudo apt install {' '.join(GUI_PACKAGES)}`" in line and line.endswith("or track without a window: --headless")


def test_qt_tests_skip_with_the_reason_where_qt_cannot_start(broken_plugin_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/app/test_viewer.py::test_plots_label_their_axes_with_units"],
                          capture_output=True, text=True, timeout=300, cwd=PROJECT, env=broken_plugin_env)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and re.fullmatch(r"1 skipped in [\d.]+s", lines[-1]), done.stdout[-3000:] + done.stderr[-2000:]
    assert "SKIPPED [1] tests/app/test_viewer.py" in done.stdout and f"Qt's GUI needs {MISSING}" in done.stdout


def test_no_display_is_its_own_message() -> None:
    bare = {"PATH": os.environ["PATH"]}
    assert gui_problem(bare) == ("the viewer needs a display and neither DISPLAY nor WAYLAND_DISPLAY is set: run it in a desktop session, "
                                 "or under xvfb-run (Debian/Ubuntu package xvfb) on a machine without one, or track without a window: --headless")
    assert "and DISPLAY is not set:" in gui_problem({**bare, "QT_QPA_PLATFORM": "xcb"})
    done = subprocess.run([sys.executable, "-m", "app.live", "--camera", "0"], capture_output=True, text=True, timeout=60, cwd=PROJECT,
                          env={key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")})
    assert done.returncode == 2 and done.stderr.splitlines() == [f"error: {gui_problem(bare)}"], done.stderr


def test_a_display_that_does_not_answer() -> None:
    display = unused_display()
    problem = gui_problem({**os.environ, "QT_QPA_PLATFORM": "xcb", "DISPLAY": display})
    if problem.startswith("the viewer cannot start: Qt's GUI needs"):  # the library is missing: that comes first
        pytest.skip(problem)
    assert problem == (f"the viewer cannot open a window: Qt could not connect to the X display '{display}' (is the X server running?); "
                       "or track without a window: --headless")


def test_offscreen_needs_no_child_process(monkeypatch) -> None:
    def no_child(*args, **kwargs):
        raise AssertionError("the offscreen platform needs no probe")

    monkeypatch.setattr(qt_platform.subprocess, "run", no_child)
    assert gui_problem({"PATH": os.environ["PATH"], "QT_QPA_PLATFORM": "offscreen"}) is None


def test_cv2s_qt_settings_never_reach_qt(monkeypatch, tmp_path: Path) -> None:
    import cv2

    cv2_qt = Path(cv2.__file__).parent / "qt"
    environ = {"QT_QPA_PLATFORM_PLUGIN_PATH": str(cv2_qt / "plugins"), "QT_QPA_FONTDIR": str(cv2_qt / "fonts"), "QT_PLUGIN_PATH": str(tmp_path)}
    assert drop_cv2_qt_settings(environ) == ["QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR"]
    assert environ == {"QT_PLUGIN_PATH": str(tmp_path)}, "the user's own settings stay"
    mine = {"QT_QPA_PLATFORM_PLUGIN_PATH": str(tmp_path)}
    assert drop_cv2_qt_settings(mine) == [] and mine == {"QT_QPA_PLATFORM_PLUGIN_PATH": str(tmp_path)}
    # Qt in the check's child is not told cv2's folder (it names the folder it searched)
    problem = gui_problem({"PATH": os.environ["PATH"], "QT_QPA_PLATFORM": "nonesuch", "QT_QPA_PLATFORM_PLUGIN_PATH": str(cv2_qt / "plugins")})
    assert 'Could not find the Qt platform plugin "nonesuch" in ""' in problem and "cv2" not in problem
    # nor this process's Qt
    monkeypatch.setenv("QT_QPA_PLATFORM_PLUGIN_PATH", str(cv2_qt / "plugins"))
    drop_cv2_qt_settings()
    assert "QT_QPA_PLATFORM_PLUGIN_PATH" not in os.environ


def test_library_packages_are_debians() -> None:
    """The table against dpkg's own records, where dpkg is (Debian, Ubuntu): every library of it
    that is installed belongs to the package it names (Ubuntu's 64-bit-time renames, ...t64, aside)."""
    assert set(GUI_PACKAGES) <= set(DEBIAN_PACKAGES.values())
    assert missing_library_message("libxcb-icccm.so.4").startswith(
        "the viewer cannot start: Qt's GUI needs libxcb-icccm.so.4, which is not installed (Debian/Ubuntu package libxcb-icccm4); "
        "install it and the other libraries of Qt's window with `sudo apt install libxcb-icccm4 libxcb-cursor0 libxcb-image0")
    if shutil.which("dpkg") is None:
        pytest.skip("no dpkg here")
    listed = subprocess.run(["dpkg", "-S", *(f"*/{library}" for library in DEBIAN_PACKAGES)], capture_output=True, text=True).stdout
    owners = {Path(path).name: package.split(":")[0] for package, path in (line.split(": ", 1) for line in listed.splitlines())}
    checked = {library: DEBIAN_PACKAGES[library] for library in DEBIAN_PACKAGES if library in owners}
    assert len(checked) >= 10, owners
    assert {library: owners[library].removesuffix("t64") for library in checked} == checked
