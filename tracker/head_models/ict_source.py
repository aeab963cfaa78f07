"""Find or obtain the packed ICT-FaceKit model (``ict_face_model.npz``) that ``ICT.from_npz`` loads.

``locate_ict_model`` takes the first of:
  1. the path given (``--ict-model``): an npz, a folder holding ``ict_face_model.npz``, or an
     upstream ICT-FaceKit checkout (or its ``FaceXModel`` folder), converted once into the cache;
  2. N2F_ICT_MODEL (same rules);
  3. ``$N2F_SHARED_DIR/ict-facekit/ict_face_model.npz``;
  4. the cache, ``$N2F_CACHE_DIR/ict_face_model.npz`` (default ``~/.cache/n2f-tracker``);
  5. N2F_ICT_FACEKIT, an upstream checkout, converted into the cache;
  6. a download of the upstream repository archive pinned to ``UPSTREAM_COMMIT`` (or
     N2F_ICT_FACEKIT_URL), checked and converted into the cache with upstream's MIT LICENSE
     beside it; skipped when N2F_OFFLINE=1.
A path named in 1, 2 or 5 that does not exist is an error: the search does not go on past it.

    python -m tracker.head_models ict-source [--download] [--url URL] [--from-checkout DIR]
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import numpy as np

from tracker.errors import TrackerError
from tracker.files.atomic_write import atomic_write, staged
from tracker.files.paths import cache_dir, shared_dir
from tracker.head_models.ict_convert import UPSTREAM_REGIONS, convert

UPSTREAM_REPO = "https://github.com/ICT-VGL/ICT-FaceKit"
UPSTREAM_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"  # the shared npz's source (its README: da5f95a)
DEFAULT_URL = f"{UPSTREAM_REPO}/archive/{UPSTREAM_COMMIT}.zip"

MODEL_NAME = "ict_face_model.npz"
LICENSE_NAME = "ict_face_model.LICENSE"  # upstream's LICENSE, beside the cached npz
SOURCE_NAME = "ict_face_model.source"  # what the cached npz was made from (checkout folder or URL)
MODEL_FOLDER = "FaceXModel"

MAX_DOWNLOAD_BYTES = 2 << 30  # the archive
MAX_EXTRACT_BYTES = 2 << 30  # the model files taken out of it
TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20
UNKNOWN_SIZE_REPORT_BYTES = 50 << 20  # progress step when the server sends no Content-Length
USER_AGENT = "n2f-tracker (ICT-FaceKit model download; tracker.head_models.ict_source)"
MIT_MARKERS = ("MIT License", "Permission is hereby granted, free of charge")
OFFLINE_VALUES = {"1", "true", "yes"}
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """What the converted model must hold; the default is upstream's "Light" model."""

    num_vertices: int = 26719
    num_identities: int = 100
    num_expressions: int = 53
    num_landmarks: int = 68
    regions: Mapping[str, tuple[int, int]] = field(default_factory=lambda: dict(UPSTREAM_REGIONS))


ICT_LIGHT = ModelSpec()


class DownloadError(TrackerError):
    """The archive could not be fetched (network, server or timeout)."""


def locate_ict_model(
    explicit: str | Path | None = None,
    *,
    allow_download: bool | None = None,
    url: str | None = None,
    log: Log = print,
    spec: ModelSpec = ICT_LIGHT,
) -> Path:
    """The packed npz's path, found, converted or downloaded in the module docstring's order.

    ``allow_download`` None: download unless N2F_OFFLINE is 1/true. ``url`` (else
    N2F_ICT_FACEKIT_URL, else ``DEFAULT_URL``) is the archive to fetch. ``spec`` is what a
    conversion must produce. Raises TrackerError listing the places searched and how to get it.
    """
    searched = []
    for given, label in ((explicit, "--ict-model"), (os.environ.get("N2F_ICT_MODEL"), "N2F_ICT_MODEL")):
        if given:
            return _resolve_given(Path(given).expanduser(), label, spec, log)
        searched.append(f"{label}: not given")

    shared = shared_dir()
    if shared is None:
        searched.append("shared folder: N2F_SHARED_DIR not set and no ../shared beside the checkout")
    else:
        candidate = shared / "ict-facekit" / MODEL_NAME
        if candidate.is_file():
            return candidate
        searched.append(f"shared folder: {candidate} (absent)")

    cached = cache_dir() / MODEL_NAME
    if cached.is_file():
        return cached
    searched.append(f"cache: {cached} (absent)")

    checkout = os.environ.get("N2F_ICT_FACEKIT")
    if checkout:
        return convert_checkout(existing_path(Path(checkout).expanduser(), "N2F_ICT_FACEKIT"), spec=spec, log=log)
    searched.append("N2F_ICT_FACEKIT: not set")

    if allow_download is None:
        allow_download = not offline()
    if not allow_download:
        reason = "downloading is off (N2F_OFFLINE=1)" if offline() else "downloading was not allowed"
        raise TrackerError(_not_found(searched, reason))
    source = url or os.environ.get("N2F_ICT_FACEKIT_URL") or DEFAULT_URL
    try:
        return download_ict_model(source, spec=spec, log=log)
    except DownloadError as err:
        raise TrackerError(_not_found(searched, str(err))) from err


def offline() -> bool:
    """Whether N2F_OFFLINE forbids downloads."""
    return os.environ.get("N2F_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def convert_checkout(checkout: Path, *, spec: ModelSpec = ICT_LIGHT, log: Log = print) -> Path:
    """Convert an upstream checkout (or its FaceXModel folder) into the cache, unless the cached
    npz was already made from this checkout; returns the cached npz."""
    folder = checkout / MODEL_FOLDER if (checkout / MODEL_FOLDER).is_dir() else checkout
    if not (folder / "generic_neutral_mesh.obj").is_file():
        raise TrackerError(
            f"{checkout} is neither {MODEL_NAME} nor an ICT-FaceKit checkout ({MODEL_FOLDER}/generic_neutral_mesh.obj "
            f"is missing); clone {UPSTREAM_REPO} and give its folder"
        )
    source = f"checkout {folder.resolve()}"
    target = cache_dir() / MODEL_NAME
    if target.is_file() and _read_source(target) == source:
        return target
    root = checkout if folder != checkout else checkout.parent if checkout.name == MODEL_FOLDER else None
    license_text = None
    if root is not None and (root / "LICENSE").is_file():
        license_text = (root / "LICENSE").read_text(encoding="utf-8", errors="replace")
        _check_license(license_text, str(root / "LICENSE"))
    log(f"converting the ICT-FaceKit checkout {checkout} into {target} (about a minute)")
    with _staging() as staging:
        out = convert(checkout, staging / MODEL_NAME, regions=spec.regions)
        verify_model(out, spec)
        return _install(out, source, license_text)


def download_ict_model(
    url: str = DEFAULT_URL,
    *,
    spec: ModelSpec = ICT_LIGHT,
    log: Log = print,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Fetch the upstream archive from ``url``, check it, convert its FaceXModel folder into the
    cache (replacing a cached npz) and return the npz. Nothing is left behind on failure.

    Raises DownloadError when the archive cannot be fetched, TrackerError when it is not a
    complete ICT-FaceKit archive.
    """
    _check_url(url)
    target = cache_dir() / MODEL_NAME
    with _staging() as staging:
        archive = staging / "ICT-FaceKit.zip"
        _fetch(url, archive, max_bytes=max_bytes, timeout=timeout, log=log)
        log("checking the archive")
        model_dir, license_text = _extract_model(archive, staging / MODEL_FOLDER, spec, url)
        archive.unlink()
        log(f"converting the model into {target} (about a minute)")
        out = convert(model_dir, staging / MODEL_NAME, regions=spec.regions)
        verify_model(out, spec)
        return _install(out, url, license_text)


def verify_model(path: Path, spec: ModelSpec = ICT_LIGHT) -> None:
    """Check a converted npz's counts against ``spec``; raises TrackerError naming the mismatch."""
    with np.load(path, allow_pickle=False) as npz:
        shapes = {key: npz[key].shape for key in ("neutral", "identity_deltas", "expression_deltas", "landmarks68")}
        landmarks = npz["landmarks68"]
    v = spec.num_vertices
    expected = {
        "neutral": (v, 3),
        "identity_deltas": (spec.num_identities, v, 3),
        "expression_deltas": (spec.num_expressions, v, 3),
        "landmarks68": (spec.num_landmarks,),
    }
    wrong = [f"{key} {shapes[key]} (expected {shape})" for key, shape in expected.items() if shapes[key] != shape]
    if not wrong and landmarks.size and (landmarks.min() < 0 or landmarks.max() >= v):
        wrong.append(f"landmarks68 outside [0, {v})")
    if wrong:
        raise TrackerError(f"the converted ICT-FaceKit model does not match the expected one: {'; '.join(wrong)}. Use the upstream model at commit {UPSTREAM_COMMIT}.")


# -- download and checks ------------------------------------------------------------------------
def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        return
    raise TrackerError(f"the ICT-FaceKit archive URL must be https:// (got {url!r}; check N2F_ICT_FACEKIT_URL / --url)")


def _fetch(url: str, dest: Path, *, max_bytes: int, timeout: float, log: Log) -> None:
    """Stream ``url`` into ``dest`` with progress lines; DownloadError on network failure."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    done = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("wb") as out:
            total = _content_length(response)
            if total is not None and total > max_bytes:
                raise TrackerError(f"{url} is {total / 1e6:.0f} MB, more than the {max_bytes / 1e6:.0f} MB limit; is it the ICT-FaceKit archive?")
            log(f"downloading {url}" + (f" ({total / 1e6:.0f} MB)" if total else ""))
            reported = 0
            while chunk := response.read(CHUNK_BYTES):
                done += len(chunk)
                if done > max_bytes:
                    raise TrackerError(f"{url} is larger than the {max_bytes / 1e6:.0f} MB limit; is it the ICT-FaceKit archive?")
                out.write(chunk)
                step = done * 10 // total if total else done // UNKNOWN_SIZE_REPORT_BYTES
                if step > reported:
                    reported = step
                    log(f"  {step * 10}% of {total / 1e6:.0f} MB" if total else f"  {done / 1e6:.0f} MB")
    except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts, resets, TLS
        reason = err.reason if type(err) is urllib.error.URLError else err
        raise DownloadError(f"downloading {url} failed ({reason})") from err
    if total is not None and done != total:
        raise DownloadError(f"downloading {url} failed (the transfer stopped after {done} of {total} bytes)")


def _content_length(response) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, TypeError, ValueError):
        return None


def _extract_model(archive: Path, dest: Path, spec: ModelSpec, url: str) -> tuple[Path, str | None]:
    """Check the archive and copy the files the converter needs into ``dest``; returns ``dest``
    and upstream's LICENSE text (None when the archive has none)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            damaged = zf.testzip()
            if damaged is not None:
                raise TrackerError(f"the archive from {url} is damaged ({damaged} fails its checksum); try again")
            names = zf.namelist()
            unsafe = [name for name in names if not _safe_member(name)]
            if unsafe:
                raise TrackerError(f"the archive from {url} has unsafe member names ({', '.join(unsafe[:3])}); refusing to use it")
            prefix = _model_prefix(names, url)
            config = _archive_config(zf, prefix + "vertex_indices.json", url)
            expressions = [f"{name}.obj" for name in config["expressions"]]
            identities = [f"identity{i:03d}.obj" for i in range(spec.num_identities)]
            needed = ["generic_neutral_mesh.obj", "vertex_indices.json", *identities, *expressions]
            present = set(names)
            missing = [name for name in needed if prefix + name not in present]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise TrackerError(f"the archive from {url} is not a complete ICT-FaceKit model: {MODEL_FOLDER}/ lacks {shown}")
            if sum(zf.getinfo(prefix + name).file_size for name in needed) > MAX_EXTRACT_BYTES:
                raise TrackerError(f"the model files in the archive from {url} exceed {MAX_EXTRACT_BYTES / 1e9:.0f} GB; refusing to extract them")
            dest.mkdir()
            for name in needed:
                with zf.open(prefix + name) as src, (dest / name).open("wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_BYTES)
            license_member = prefix[: -len(MODEL_FOLDER) - 1] + "LICENSE"
            license_text = zf.read(license_member).decode("utf-8", errors="replace") if license_member in present else None
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise TrackerError(f"the download from {url} is not a valid zip archive ({err}); try again") from err
    if license_text is not None:
        _check_license(license_text, url)
    return dest, license_text


def _safe_member(name: str) -> bool:
    """A relative member name that stays inside the extraction folder."""
    parts = PurePosixPath(name).parts
    return not (name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0]))


def _model_prefix(names: list[str], url: str) -> str:
    """``<root>/FaceXModel/`` (or ``FaceXModel/``) of the archive."""
    marker = f"{MODEL_FOLDER}/generic_neutral_mesh.obj"
    prefixes = {
        name[: -len("generic_neutral_mesh.obj")]
        for name in names
        if name == marker or (name.endswith("/" + marker) and name.count("/") == 2)
    }
    if len(prefixes) != 1:
        raise TrackerError(f"the archive from {url} is not an ICT-FaceKit repository archive (expected one {marker}, found {len(prefixes)})")
    return prefixes.pop()


def _archive_config(zf: zipfile.ZipFile, member: str, url: str) -> dict:
    """vertex_indices.json of the archive; its expression names must be plain file names."""
    try:
        config = json.loads(zf.read(member).decode("utf-8"))
    except KeyError as err:
        raise TrackerError(f"the archive from {url} lacks {member}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TrackerError(f"{member} in the archive from {url} is not valid JSON ({err})") from err
    expressions = config.get("expressions") if isinstance(config, dict) else None
    if not isinstance(expressions, list) or not all(isinstance(n, str) and _plain_name(n) for n in expressions):
        raise TrackerError(f"{member} in the archive from {url} must list the expression names as plain file names")
    return config


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _check_license(text: str, source: str) -> None:
    if not all(marker in text for marker in MIT_MARKERS):
        raise TrackerError(f"the LICENSE from {source} is not the MIT licence this project relies on; check upstream's terms ({UPSTREAM_REPO}) before using the model")


# -- cache -------------------------------------------------------------------------------------
@contextmanager
def _staging() -> Iterator[Path]:
    """A temporary folder inside the cache folder (same file system: atomic renames), removed on
    exit, Ctrl-C and errors included."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".ict-facekit-") as staging:
        yield Path(staging)


def _install(npz: Path, source: str, license_text: str | None) -> Path:
    """Move the converted npz (in the staging folder) into the cache, then write its source record
    and LICENSE, each atomically and durably, never through a link in the way (``tracker.files.atomic_write``)."""
    target = cache_dir() / MODEL_NAME
    with staged(target) as temporary:
        os.replace(npz, temporary)
    atomic_write(target.with_name(SOURCE_NAME), f"{source}\n".encode("utf-8"))
    license_path = target.with_name(LICENSE_NAME)
    if license_text is None:
        license_path.unlink(missing_ok=True)
    else:
        atomic_write(license_path, license_text.encode("utf-8"))
    return target


def _read_source(npz: Path) -> str | None:
    try:
        return npz.with_name(SOURCE_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        return None


# -- the given paths and the message -------------------------------------------------------------
def existing_path(path: Path, label: str) -> Path:
    """``path`` when it exists, else a TrackerError naming it as ``label`` (the option or variable)."""
    if not path.exists():
        raise TrackerError(f"{label} {path} does not exist; give the packed {MODEL_NAME} or an ICT-FaceKit checkout folder ({UPSTREAM_REPO})")
    return path


def _resolve_given(path: Path, label: str, spec: ModelSpec, log: Log) -> Path:
    """An npz as it is; a folder holding the npz; else a checkout, converted into the cache."""
    if existing_path(path, label).is_file():
        return path
    if (path / MODEL_NAME).is_file():
        return path / MODEL_NAME
    return convert_checkout(path, spec=spec, log=log)


def _not_found(searched: list[str], reason: str) -> str:
    places = "\n".join(f"  - {place}" for place in searched)
    return f"ICT-FaceKit model not found, and {reason}.\nSearched:\n{places}\n{how_to_get()}"


def how_to_get() -> str:
    """The ways to get the model, for the user (several lines)."""
    cache = cache_dir()
    return (
        "Get it (MIT licence) in one of these ways:\n"
        f"  1. git clone {UPSTREAM_REPO} and set N2F_ICT_FACEKIT=/path/to/ICT-FaceKit "
        f"(or pass --ict-model /path/to/ICT-FaceKit); it is converted once into {cache}\n"
        f"  2. python -m tracker.head_models ict-source --download   (fetches {DEFAULT_URL} into {cache})\n"
        f"  3. set N2F_ICT_MODEL=/path/to/{MODEL_NAME} (a packed model you already have)"
    )
