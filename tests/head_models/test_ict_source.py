"""Finding, converting and downloading the ICT-FaceKit model, on a tiny generated upstream model
served from a loopback HTTP server (nothing here reaches the internet)."""

from __future__ import annotations

import io
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tracker.errors import TrackerError
from tracker.head_models import load_head_model
from tracker.head_models.__main__ import main
from tracker.head_models.ict import ICT
from tracker.head_models.ict_source import (
    LICENSE_NAME,
    MODEL_NAME,
    SOURCE_NAME,
    UPSTREAM_COMMIT,
    DownloadError,
    ModelSpec,
    download_ict_model,
    locate_ict_model,
)

# a tiny mesh in upstream's layout (the same geometry as tests/head_models/test_ict.py's converter test)
NEUTRAL = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0.5, 0.25], [0.5, 2, -0.5], [3, 3, 1], [-1, 2, 0.75]])
UVS = [[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]]
POLYGONS = [[0, 1, 2, 3], [1, 4, 2], [3, 2, 5, 7], [4, 6, 5]]
POLYGON_UVS = [[0, 1, 2, 3], [1, 4, 2], [3, 2, 4, 0], [4, 0, 1]]
EXPRESSIONS = ["jawOpen", "eyeBlink_L", "eyeBlink_R", "mouthSmile_L"]
TINY = ModelSpec(
    num_vertices=len(NEUTRAL),
    num_identities=3,
    num_expressions=len(EXPRESSIONS),
    regions={"face": (0, 6), "narrow_face": (0, 4), "eyeball_left": (6, 7), "eyeball_right": (7, 8), "teeth": (8, 8)},
)
MIT = "MIT License\n\nCopyright (c) 2020 USC Institute for Creative Technologies\n\nPermission is hereby granted, free of charge, ...\n"
ROOT = f"ICT-FaceKit-{UPSTREAM_COMMIT}/"


def _obj(vertices: np.ndarray) -> bytes:
    lines = ["mtllib ICTFaceModelMaterial.mtl"] + [f"v {x!r} {y!r} {z!r}" for x, y, z in vertices.tolist()]
    lines += [f"vt {u!r} {v!r}" for u, v in UVS]
    lines += ["f " + " ".join(f"{a + 1}/{t + 1}" for a, t in zip(p, uv)) for p, uv in zip(POLYGONS, POLYGON_UVS)]
    return ("\n".join(lines) + "\n").encode()


def _upstream_files(expressions: list[str] = EXPRESSIONS) -> dict[str, bytes]:
    """Repository-relative path -> content of the tiny upstream model (LICENSE and README included)."""
    offsets = np.random.default_rng(0).integers(-64, 65, size=(TINY.num_identities + len(expressions), len(NEUTRAL), 3)) / 64
    files = {"LICENSE": MIT.encode(), "README.md": b"# ICT-FaceKit\n", "FaceXModel/ICTFaceModelMaterial.mtl": b"newmtl face\n"}
    files["FaceXModel/generic_neutral_mesh.obj"] = _obj(NEUTRAL)
    names = [f"identity{i:03d}" for i in range(TINY.num_identities)] + expressions
    for name, offset in zip(names, offsets):
        files[f"FaceXModel/{name}.obj"] = _obj(NEUTRAL + offset)
    config = {"expressions": expressions, "idx_to_landmark_verts": [i % len(NEUTRAL) for i in range(68)]}
    files["FaceXModel/vertex_indices.json"] = json.dumps(config).encode()
    return files


def _zip(files: dict[str, bytes], root: str = ROOT) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(root + name, content)
    return buffer.getvalue()


def _corrupt(archive: bytes, member: str) -> bytes:
    """The archive with bytes in the middle of ``member``'s compressed data overwritten."""
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    return archive[:start] + b"\xff" * 8 + archive[start + 8 :]


def _write_checkout(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


class Server:
    """A loopback HTTP server answering GET with registered bodies (Content-Length may lie)."""

    def __init__(self) -> None:
        routes: dict[str, tuple[bytes, int]] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, length = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.routes = routes
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, path: str, body: bytes, length: int | None = None) -> str:
        self.routes[path] = (body, len(body) if length is None else length)
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def settings(tmp_path, monkeypatch) -> dict[str, Path]:
    """An empty cache and shared folder, no model settings, downloads off."""
    paths = {"cache": tmp_path / "cache", "shared": tmp_path / "shared"}
    paths["shared"].mkdir()
    monkeypatch.setenv("N2F_CACHE_DIR", str(paths["cache"]))
    monkeypatch.setenv("N2F_SHARED_DIR", str(paths["shared"]))
    monkeypatch.setenv("N2F_OFFLINE", "1")
    for name in ("N2F_ICT_MODEL", "N2F_ICT_FACEKIT", "N2F_ICT_FACEKIT_URL"):
        monkeypatch.delenv(name, raising=False)
    return paths


@pytest.fixture(scope="module")
def archive() -> bytes:
    return _zip(_upstream_files())


def _cache_listing(settings) -> set[str]:
    folder = settings["cache"]
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


# -- download ----------------------------------------------------------------------------------
def test_download_verifies_converts_and_caches(server, archive, settings):
    url = server.serve("/ICT-FaceKit.zip", archive)
    lines: list[str] = []
    path = locate_ict_model(allow_download=True, url=url, log=lines.append, spec=TINY)
    assert path == settings["cache"] / MODEL_NAME
    assert _cache_listing(settings) == {MODEL_NAME, LICENSE_NAME, SOURCE_NAME}  # no temp files left
    assert (settings["cache"] / LICENSE_NAME).read_text() == MIT
    assert any(url in line for line in lines) and any("100%" in line for line in lines)
    model = ICT.from_npz(path, contour="multipie")
    assert model.num_vertices == len(NEUTRAL) and model.expression_names == tuple(EXPRESSIONS)
    assert model.param_groups["identity"].size == TINY.num_identities

    server.stop()  # the second time needs no network
    assert locate_ict_model(allow_download=True, url=url, spec=TINY) == path
    tiny = load_head_model("ict", contour="multipie")  # the default path goes through the search
    assert tiny.num_vertices == len(NEUTRAL)


def _missing(name: str):
    return lambda: _zip({k: v for k, v in _upstream_files().items() if k != name})


BAD_ARCHIVES = {
    "truncated zip": (lambda: _zip(_upstream_files())[:2000], "not a valid zip"),
    "corrupt member": (lambda: _corrupt(_zip(_upstream_files()), ROOT + "FaceXModel/identity001.obj"), "damaged|not a valid zip"),
    "no identity": (_missing("FaceXModel/identity001.obj"), "identity001.obj"),
    "no expression": (_missing("FaceXModel/eyeBlink_R.obj"), "eyeBlink_R.obj"),
    "no neutral": (_missing("FaceXModel/generic_neutral_mesh.obj"), "not an ICT-FaceKit repository archive"),
    "no config": (_missing("FaceXModel/vertex_indices.json"), "vertex_indices.json"),
    "path traversal": (lambda: _zip({**_upstream_files(), "../evil.txt": b"x"}), "unsafe member names"),
    "traversal by name": (
        lambda: _zip({k: v for k, v in _upstream_files([*EXPRESSIONS[:3], "../../evil"]).items() if "evil" not in k}),
        "plain file names",
    ),
    "not MIT": (lambda: _zip({**_upstream_files(), "LICENSE": b"All rights reserved."}), "not the MIT licence"),
    "wrong model": (lambda: _zip(_upstream_files(EXPRESSIONS[:3])), r"expression_deltas \(3, 8, 3\) \(expected \(4, 8, 3\)\)"),
}


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_bad_archive_leaves_nothing(case, server, settings):
    make, fragment = BAD_ARCHIVES[case]
    url = server.serve("/bad.zip", make())
    with pytest.raises(TrackerError, match=fragment):
        download_ict_model(url, spec=TINY, log=lambda line: None)
    assert _cache_listing(settings) == set()


def test_interrupted_transfer_is_a_download_error(server, archive, settings):
    url = server.serve("/short.zip", archive[:1000], length=len(archive))
    with pytest.raises(DownloadError, match=f"after 1000 of {len(archive)} bytes"):
        download_ict_model(url, spec=TINY, log=lambda line: None)
    assert _cache_listing(settings) == set()


def test_ctrl_c_leaves_nothing(server, archive, settings):
    url = server.serve("/ICT-FaceKit.zip", archive)

    def interrupt_on_progress(line: str) -> None:
        if "%" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_ict_model(url, spec=TINY, log=interrupt_on_progress)
    assert _cache_listing(settings) == set()


def test_size_cap(server, archive, settings):
    url = server.serve("/big.zip", archive)
    with pytest.raises(TrackerError, match="limit"):
        download_ict_model(url, spec=TINY, log=lambda line: None, max_bytes=len(archive) - 1)
    assert _cache_listing(settings) == set()


def test_plain_http_only_on_loopback():
    with pytest.raises(TrackerError, match="must be https"):
        download_ict_model("http://example.com/ICT-FaceKit.zip", spec=TINY)


# -- nothing found -----------------------------------------------------------------------------
STEPS = (
    "git clone https://github.com/ICT-VGL/ICT-FaceKit",
    "N2F_ICT_FACEKIT",
    "--ict-model",
    "python -m tracker.head_models ict-source --download",
    "N2F_ICT_MODEL",
)


def test_offline_message_lists_places_and_steps(settings):
    with pytest.raises(TrackerError) as err:
        locate_ict_model(spec=TINY)
    message = str(err.value)
    assert "N2F_OFFLINE=1" in message
    assert str(settings["cache"] / MODEL_NAME) in message and str(settings["shared"] / "ict-facekit" / MODEL_NAME) in message
    for step in STEPS:
        assert step in message


def test_network_failure_message(settings):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TrackerError) as err:
        locate_ict_model(allow_download=True, url=f"http://127.0.0.1:{port}/x.zip", spec=TINY)
    message = str(err.value)
    assert f"downloading http://127.0.0.1:{port}/x.zip failed (" in message and "refused" in message.lower()
    for step in STEPS:
        assert step in message
    assert _cache_listing(settings) == set()


def test_missing_given_paths_are_errors(settings, monkeypatch, tmp_path):
    settings["cache"].mkdir()
    (settings["cache"] / MODEL_NAME).write_bytes(b"cached")  # present, but must not be fallen back to
    absent = tmp_path / "absent.npz"
    with pytest.raises(TrackerError, match=f"--ict-model {absent} does not exist"):
        locate_ict_model(absent)
    monkeypatch.setenv("N2F_ICT_MODEL", str(absent))
    with pytest.raises(TrackerError, match=f"N2F_ICT_MODEL {absent} does not exist"):
        locate_ict_model()
    monkeypatch.delenv("N2F_ICT_MODEL")
    (settings["cache"] / MODEL_NAME).unlink()
    monkeypatch.setenv("N2F_ICT_FACEKIT", str(tmp_path / "no-checkout"))
    with pytest.raises(TrackerError, match="N2F_ICT_FACEKIT .*no-checkout does not exist"):
        locate_ict_model()
    with pytest.raises(TrackerError, match="neither ict_face_model.npz nor an ICT-FaceKit checkout"):
        locate_ict_model(tmp_path)


# -- checkouts and search order ------------------------------------------------------------------
def test_checkout_is_converted_once(settings, monkeypatch, tmp_path):
    checkout = _write_checkout(tmp_path / "ICT-FaceKit", _upstream_files())
    lines: list[str] = []
    path = locate_ict_model(checkout, log=lines.append, spec=TINY)
    assert path == settings["cache"] / MODEL_NAME and len(lines) == 1 and "converting" in lines[0]
    assert (settings["cache"] / LICENSE_NAME).read_text() == MIT
    assert ICT.from_npz(path, contour="multipie").num_vertices == len(NEUTRAL)
    assert locate_ict_model(checkout / "FaceXModel", log=lines.append, spec=TINY) == path
    assert len(lines) == 1  # the same checkout: the cached conversion is used

    monkeypatch.setenv("N2F_CACHE_DIR", str(tmp_path / "other-cache"))
    monkeypatch.setenv("N2F_ICT_FACEKIT", str(checkout))
    assert locate_ict_model(log=lines.append, spec=TINY) == tmp_path / "other-cache" / MODEL_NAME
    assert len(lines) == 2


def test_search_order(settings, monkeypatch, tmp_path):
    def place(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"npz")
        return path

    explicit = place(tmp_path / "explicit.npz")
    env_model = place(tmp_path / "env" / MODEL_NAME)
    shared = place(settings["shared"] / "ict-facekit" / MODEL_NAME)
    cached = place(settings["cache"] / MODEL_NAME)
    monkeypatch.setenv("N2F_ICT_MODEL", str(env_model))
    monkeypatch.setenv("N2F_ICT_FACEKIT", str(tmp_path / "never-converted"))
    assert locate_ict_model(explicit) == explicit
    assert locate_ict_model() == env_model
    assert locate_ict_model(tmp_path / "env") == env_model  # a folder holding the npz
    monkeypatch.delenv("N2F_ICT_MODEL")
    assert locate_ict_model() == shared  # the shared npz wins over the cache
    shared.unlink()
    assert locate_ict_model() == cached  # the cache wins over N2F_ICT_FACEKIT


def test_cli(settings, capsys, tmp_path):
    assert main(["ict-source"]) == 2
    assert "python -m tracker.head_models ict-source --download" in capsys.readouterr().err
    assert main(["ict-source", "--from-checkout", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    settings["cache"].mkdir()
    (settings["cache"] / MODEL_NAME).write_bytes(b"npz")
    assert main(["ict-source"]) == 0
    assert capsys.readouterr().out.strip() == str(settings["cache"] / MODEL_NAME)
