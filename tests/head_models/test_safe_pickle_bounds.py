"""The safe unpickler's size limits: forged shapes and lengths are refused before anything is allocated
for them (checked in a subprocess with a capped address space), inconsistent sparse matrices and arrays
are refused, and real-sized FLAME files still load."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tests.flame_factory import MODEL_FILE, flame_arrays, make_flame_dir, write_model
from tracker.head_models import safe_pickle
from tracker.head_models.safe_pickle import (
    MAX_ARRAY_BYTES,
    MAX_FILE_BYTES,
    load_npy_object,
    load_pickle,
    to_numpy,
)

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar


class _Reduce:
    """Pickles as ``func(*args)``, then BUILD with ``state`` when one is given."""

    def __init__(self, func, args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _again(obj, state) -> _Reduce:
    """Pickles as ``scalar(dtype('O'), obj)``, which is ``obj`` itself, then BUILD with ``state``: sets the
    state of an object pickled before once more."""
    return _Reduce(scalar, (np.dtype("O"), obj), state)


def _reshaped(matrix: sp.spmatrix, shape: tuple[int, int]) -> sp.spmatrix:
    """A copy of ``matrix`` with a forged shape (scipy keeps it in ``_shape``, pickled as it is)."""
    matrix = matrix.copy()
    matrix._shape = shape
    return matrix


def _sparse(shape: tuple[int, int]) -> sp.csc_matrix:
    """A 2 x 2 csc matrix forged to ``shape``: its 2 columns stay consistent with a shape (n, 2)."""
    return _reshaped(sp.csc_matrix(np.eye(2)), shape)


def _array(shape: tuple[int, ...], dtype: str, data: bytes | list) -> _Reduce:
    """A numpy array as numpy pickles it, declaring ``shape`` and ``dtype`` over ``data``."""
    return _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, shape, np.dtype(dtype), False, data))


def _tensor(size: tuple[int, ...], stride: tuple[int, ...]) -> _Reduce:
    """A torch tensor as torch pickles it: a view of size ``size`` and ``stride`` on a 1-element storage."""
    storage = torch.zeros(1)._typed_storage()
    return _Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, size, stride, False, collections.OrderedDict()))


def _storage(numel: int) -> _Reduce:
    """A torch storage of 3 int64 values, as pickle writes it, whose payload declares ``numel`` elements."""
    _, (payload,) = torch.tensor([1, 2, 3])._typed_storage().__reduce__()
    assert payload.count(b"K\x03N") == 1  # numel 3, then no view
    forged = payload.replace(b"K\x03N", pickle.dumps(numel, 2)[2:-1] + b"N")
    return _Reduce(torch.storage._load_from_bytes, (forged,))


def _dump(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


# name -> (what the file holds: an object pickled at protocol 2, or raw pickle bytes; what the error must say).
# Each would allocate far more than the capped subprocess may.
FORGED = {
    "sparse_2g_x_2g.pkl": ({"J_regressor": _sparse((2**31, 2**31))}, "csc_matrix of shape (2147483648, 2147483648)"),
    "sparse_36tib.pkl": ({"J_regressor": _sparse((5, 10**12))}, "csc_matrix of shape (5, 1000000000000)"),
    "sparse_8gb.pkl": ({"J_regressor": _sparse((5, 2 * 10**8))}, "csc_matrix of shape (5, 200000000)"),
    "sparse_consistent.pkl": ({"J_regressor": _sparse((10**12, 2))}, "csc_matrix of shape (1000000000000, 2)"),
    "array_shape.pkl": ({"v_template": _array((2**31, 2**31), "f8", b"")}, "array of shape (2147483648, 2147483648)"),
    "object_array.pkl": ({"v_template": _array((2**30,), "O", [])}, "array of shape (1073741824,) and dtype object"),
    "tensor_view.pkl": ({"dynamic": _tensor((2**40,), (0,))}, "torch tensor of size (1099511627776,)"),
    "storage_numel.pkl": ({"dynamic": _storage(2**40)}, "declares 8796093022208 bytes"),
    "bytes_call.pkl": ({"x": _Reduce(bytes, (2**40,))}, "bytes(...) with arguments"),
    "bytearray8.pkl": (b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b".", "truncated"),
    "binbytes8.pkl": (b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b".", "truncated"),
}

# loads each path as the FLAME loader would (a folder through FLAME.from_dir), in an address space capped
# at 2 GiB above what the imports took; prints {path: "ok" or "ExceptionType: message"}
_CAPPED_LOADER = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    import torch
    from tracker.head_models.flame import FLAME
    from tracker.head_models.safe_pickle import load_pickle, to_numpy

    torch.set_num_threads(1)
    mapped = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + 2**31, mapped + 2**31))

    def use(path):
        if path.is_dir():
            return FLAME.from_dir(path)
        data = load_pickle(path)
        for value in data.values() if isinstance(data, dict) else [data]:
            np.isfinite(to_numpy(value)).all()

    outcomes = {}
    for path in map(Path, sys.argv[1:]):
        try:
            use(path)
            outcomes[str(path)] = "ok"
        except BaseException as error:
            outcomes[str(path)] = f"{type(error).__name__}: {error}"
    print(json.dumps(outcomes))
""")


@pytest.fixture(scope="module")
def capped(tmp_path_factory) -> dict[str, str]:
    """Outcome of each forged file, of a FLAME folder whose model has the 36 TiB J_regressor and of an
    intact one, loaded in one capped subprocess; keys: the names in FORGED, "intact", "forged_model"."""
    root = tmp_path_factory.mktemp("forged")
    paths = {"intact": make_flame_dir(root / "intact", "2023"), "forged_model": make_flame_dir(root / "forged", "2023")}
    model = paths["forged_model"] / MODEL_FILE["2023"]
    write_model(model, "2023", {**flame_arrays(), "J_regressor": _reshaped(flame_arrays()["J_regressor"], (5, 10**12))})
    for name, (content, _) in FORGED.items():
        paths[name] = root / name
        paths[name].write_bytes(content if isinstance(content, bytes) else _dump(content))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    result = subprocess.run([sys.executable, "-c", _CAPPED_LOADER, *map(str, paths.values())], capture_output=True,
                            text=True, timeout=300, env=env, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout.splitlines()[-1])
    return {name: outcomes[str(path)] for name, path in paths.items()} | {"forged_model_path": str(model)}


@pytest.mark.parametrize("name", FORGED)
def test_forged_sizes_are_refused_before_allocating(capped, name):
    outcome, expected = capped[name], FORGED[name][1]
    assert outcome.startswith("UnpicklingError") and expected in outcome, outcome


def test_forged_model_gives_a_tracker_error_naming_the_file(capped):
    outcome = capped["forged_model"]
    assert outcome.startswith("TrackerError") and capped["forged_model_path"] in outcome, outcome
    assert "refusing a scipy.sparse csc_matrix of shape (5, 1000000000000)" in outcome


def test_real_sized_model_loads_under_the_same_cap(capped):
    assert capped["intact"] == "ok"


# -- consistency (small files, in this process) ---------------------------------------------------
DENSE = np.array([[0.0, 1, 2], [3, 0, 4]])  # csc: indptr [0 1 2 4], indices [1 0 0 1]; csr: [0 2 4], [1 2 0 2]


def _changed(matrix, **attributes):
    for key, value in attributes.items():
        setattr(matrix, key, value)
    return matrix


def _ints(*values) -> np.ndarray:
    return np.array(values, np.int32)


@pytest.mark.parametrize("matrix", [
    _changed(sp.csc_matrix(DENSE), indptr=_ints(0, 1, 2)),  # a column short
    _changed(sp.csc_matrix(DENSE), indptr=_ints(0, 2, 1, 4)),  # decreasing
    _changed(sp.csc_matrix(DENSE), indptr=_ints(1, 1, 2, 4)),  # not from 0
    _changed(sp.csc_matrix(DENSE), indptr=_ints(0, 1, 2, 5)),  # past the data
    _changed(sp.csc_matrix(DENSE), indices=_ints(1, 0, 0, 2)),  # row 2 of 2
    _changed(sp.csc_matrix(DENSE), indices=_ints(1, 0, 0)),  # one short of the data
    _changed(sp.csc_matrix(DENSE), indices=np.array([1.0, 0, 0, 1])),  # not integers
    _changed(sp.csr_matrix(DENSE), data=np.ones(3)),  # data one short
    _changed(sp.coo_matrix(DENSE), coords=(_ints(0, 0, 1, 1), _ints(1, 2, 0, 3))),  # column 3 of 3
], ids=["indptr-short", "indptr-decreasing", "indptr-start", "indptr-end", "index-out-of-shape", "indices-short",
        "indices-float", "csr-data-short", "coo-out-of-shape"])
def test_inconsistent_sparse_matrices_are_refused(matrix):
    with pytest.raises(pickle.UnpicklingError, match="index arrays do not match"):
        load_pickle(io.BytesIO(_dump({"J_regressor": matrix})))


def test_sparse_matrices_of_every_allowed_format_load():
    old_coo = sp.coo_matrix(DENSE)  # as scipy < 1.13 pickled it: row and col instead of coords
    old_coo.__dict__.update(row=old_coo.coords[0], col=old_coo.coords[1])
    del old_coo.__dict__["coords"]
    for matrix in (sp.csc_matrix(DENSE), sp.csr_matrix(DENSE), sp.coo_matrix(DENSE), old_coo):
        for protocol in (0, 2, 4, 5):
            np.testing.assert_array_equal(to_numpy(load_pickle(io.BytesIO(pickle.dumps(matrix, protocol)))), DENSE)


@pytest.mark.parametrize("shape, dtype, data, message", [
    ((4,), "f8", bytes(8), "does not match its shape"),
    ((3,), "O", [1, 2], "does not match its shape"),
    ((MAX_ARRAY_BYTES // 8 + 1,), "f8", b"", "more than any FLAME array takes"),
    ((2, -2), "f8", b"", "malformed pickled shape"),
])
def test_arrays_must_match_their_data(shape, dtype, data, message):
    with pytest.raises(pickle.UnpicklingError, match=message):
        load_pickle(io.BytesIO(_dump(_array(shape, dtype, data))))


@pytest.mark.filterwarnings("ignore:Unpickling a scalar with object dtype:DeprecationWarning")
def test_checked_objects_cannot_be_changed_afterwards():
    """A second BUILD could otherwise undo a check: re-set a checked sparse matrix's indices, grow a
    checked array's dtype, or re-view a tensor (torch's Tensor.__setstate__ calls set_)."""
    matrix = sp.csc_matrix(DENSE)
    indices = (1, (4,), matrix.indices.dtype, False, _ints(1, 0, 0, 9).tobytes())
    with pytest.raises(pickle.UnpicklingError, match="state of a numpy array twice"):
        load_pickle(io.BytesIO(_dump({"J": matrix, "x": _again(matrix.indices, indices)})))

    array = np.frombuffer(b"12345678", dtype="V8")
    grown = _again(array.dtype, (3, "|", None, None, None, 2**20, 1, 0))  # item size 1 MiB
    loaded = load_pickle(io.BytesIO(_dump({"a": array, "d": grown})))
    assert loaded["d"].itemsize == 2**20 and loaded["a"].itemsize == 8 and loaded["a"].tobytes() == b"12345678"

    tensor = torch.zeros(1)
    with pytest.raises(pickle.UnpicklingError, match="state of a Tensor"):
        load_pickle(io.BytesIO(_dump({"t": _again(tensor, (tensor._typed_storage(), 0, (2**40,), (0,)))})))


def test_file_size_and_budget_are_bounded(tmp_path, monkeypatch):
    """Shrunk limits, so that small files exceed them: the file's size, then the sum of its arrays."""
    path = tmp_path / "masks.pkl"
    path.write_bytes(_dump({"face": np.arange(100), "nose": np.arange(100)}))  # 800 bytes each
    monkeypatch.setattr(safe_pickle, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(pickle.UnpicklingError, match=f"refusing a {path.stat().st_size}-byte file"):
        load_pickle(path)
    monkeypatch.setattr(safe_pickle, "MAX_FILE_BYTES", 2**20)
    monkeypatch.setattr(safe_pickle, "MAX_BUILT_BYTES", 1000)
    with pytest.raises(pickle.UnpicklingError, match="would take more than 1000 bytes"):
        load_pickle(path)


def test_npy_header_shape_is_bounded(tmp_path):
    path = tmp_path / "l_eyelid.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (2**40, 3)})
        f.write(bytes(24))
    with pytest.raises(pickle.UnpicklingError, match=r"\.npy array of shape \(1099511627776, 3\)"):
        load_npy_object(path)


@pytest.mark.parametrize("variant", ["2020", "2023"])
def test_real_sized_models_load_with_headroom(tmp_path, variant):
    """The generated models have FLAME's real sizes (shapedirs 5023 x 3 x 400 float64); they load intact,
    well inside the limits."""
    path = make_flame_dir(tmp_path, variant) / MODEL_FILE[variant]
    assert path.stat().st_size * 3 < MAX_FILE_BYTES
    loaded = load_pickle(path)
    for key, expected in flame_arrays().items():
        if not isinstance(expected, str):
            array = to_numpy(loaded[key])
            np.testing.assert_array_equal(array, to_numpy(expected), err_msg=key)
            assert array.nbytes * 5 < MAX_ARRAY_BYTES
