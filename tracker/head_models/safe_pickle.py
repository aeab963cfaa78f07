"""Allow-list unpickling for the FLAME ecosystem's pickle files (``.pkl``, object ``.npy``).

Plain ``pickle.load`` runs whatever a file names. This unpickler resolves only the globals that
numpy arrays, scipy sparse matrices, torch tensors (DECA's ``landmark_embedding.npy``) and
chumpy objects (FLAME 2020) need, and refuses any other with ``pickle.UnpicklingError``.
chumpy itself is never imported: every ``chumpy.*`` class becomes ``ChumpyObject``.

It refuses sizes no FLAME file has, too, before anything is allocated for them: each array, tensor,
torch storage and sparse matrix (by the dense array ``to_numpy`` makes of it) must fit
``MAX_ARRAY_BYTES`` and match the data it holds, and one file builds at most ``MAX_BUILT_BYTES``.
"""

from __future__ import annotations

import _codecs
import collections
import copy
import copyreg
import io
import math
import os
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse as sp
import torch
from numpy.lib import format as npy_format

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer

# FLAME's largest array is shapedirs, 5023 x 3 x 400 float64 = 48 MB (6.0M numbers); its largest files,
# generic_model.pkl (2020) and flame2023.pkl, build ~53 MB of arrays (and take 67 MB when Python 3 writes
# them at protocol 2). The limits leave 4-10x room and refuse what no FLAME file holds.
MAX_ARRAY_BYTES = 2**28  # 256 MiB: one array, tensor, storage, or sparse matrix as a dense array
MAX_FILE_BYTES = 2**28  # 256 MiB: a file's size
MAX_BUILT_BYTES = 2**29  # 512 MiB: all the arrays, tensors, storages and sparse matrices one file builds


class ChumpyObject:
    """Stand-in for any pickled chumpy class; chumpy's ``Ch`` keeps its array in ``state['x']``."""

    def __setstate__(self, state: dict) -> None:
        self.state = state

    @property
    def array(self) -> np.ndarray:
        state = getattr(self, "state", None)
        if not isinstance(state, dict) or "x" not in state:
            raise ValueError("a chumpy object without an 'x' array (a derived chumpy expression) cannot be read")
        return np.asarray(state["x"])


class _NdarrayType:
    """What the global ``numpy.ndarray`` resolves to: numpy's pickles pass it only to ``_reconstruct``,
    and calling ``ndarray`` itself would allocate any shape the file names."""


def _count(shape: Any) -> int:
    """Element count of a pickled shape: a tuple of at most 64 non-negative integers."""
    if not (isinstance(shape, tuple) and len(shape) <= 64
            and all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape)):
        raise pickle.UnpicklingError("malformed pickled shape")
    return math.prod(int(n) for n in shape)


def _check_bytes(nbytes: int, what: str) -> None:
    if nbytes > MAX_ARRAY_BYTES:
        raise pickle.UnpicklingError(f"refusing {what}: {nbytes} bytes, more than any FLAME array takes "
                                     f"(at most {MAX_ARRAY_BYTES}); the file is damaged or forged")


def _check_file_size(size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise pickle.UnpicklingError(f"refusing a {size}-byte file: FLAME files are far smaller "
                                     f"(at most {MAX_FILE_BYTES} bytes accepted)")


def _own_dtype(dtype: Any) -> np.dtype:
    """A copy of a pickled dtype: the pickle could reset the original's state (its item size too)
    after an array was checked against it."""
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("malformed pickled numpy dtype")
    return copy.copy(dtype)


def _is_index(array: Any, length: int, bound: int) -> bool:
    """Whether ``array`` is a 1-D integer array of ``length`` entries, each in [0, bound)."""
    return (isinstance(array, np.ndarray) and array.ndim == 1 and array.dtype.kind in "iu" and len(array) == length
            and (length == 0 or (array.min() >= 0 and array.max() < bound)))


class _Data(io.BytesIO):
    """Pickle data in memory whose reads never come up short: a pickle that declares more than is left
    is truncated (or forged), and a read stops at the data's end instead of allocating what it asks."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and 0 <= size != len(data):
            raise pickle.UnpicklingError("pickle data was truncated")
        return data


class _InMemoryUnpickler(pickle._Unpickler):
    """Python's own unpickler over ``_Data`` (the C unpickler allocates a declared length before reading)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: _Data) -> None:
        super().__init__(file, encoding="latin1")  # latin1 so Python 2 pickles load

    def load_bytearray8(self) -> None:
        """BYTEARRAY8, reading before allocating (pickle's allocates the declared length first)."""
        (size,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(size)))

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


class _StorageDeclarations(_InMemoryUnpickler):
    """Reads one pickle of a legacy ``torch.save`` payload (what ``_load_from_bytes`` gets) only for the
    storages it declares, whose size torch allocates before reading their data."""

    def __init__(self, file: _Data, declared: dict[str, int]) -> None:
        super().__init__(file)
        self.declared = declared

    def find_class(self, module: str, name: str) -> torch.dtype:
        storage_type = getattr(torch, name, None) if module == "torch" and name.endswith("Storage") else None
        dtype = getattr(storage_type, "_dtype", None)  # torch.FloatStorage and the other legacy types
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"refusing global '{module}.{name}' in a torch storage payload")
        return dtype

    def persistent_load(self, pid: Any) -> None:
        """("storage", dtype, key, location, numel, view): torch allocates numel elements per key."""
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
                and isinstance(pid[2], str) and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError("malformed torch storage payload")
        self.declared[pid[2]] = pid[4] * pid[1].itemsize


def _declared_storage_bytes(data: bytes) -> int:
    """Bytes the storages of a legacy ``torch.save`` payload declare, read before torch allocates them."""
    file, declared = _Data(data), {}
    for _ in range(4):  # magic number, protocol version, system info, the pickle naming the storages
        _StorageDeclarations(file, declared).load()
    return sum(declared.values())


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) as a pickle names it -> the object it resolves to, or the name of the
    ``SafeUnpickler`` method that stands in for it with size checks."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NdarrayType,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _codecs.encode,  # bytes in protocol-2 pickles written by Python 3
        ("torch._utils", "_rebuild_tensor_v2"): "_rebuild_tensor",
        ("torch.storage", "_load_from_bytes"): "_load_storage_from_bytes",
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        allowed[(f"{core}.multiarray", "_reconstruct")] = "_reconstruct"
        allowed[(f"{core}.multiarray", "scalar")] = "_scalar"
        allowed[(f"{core}.numeric", "_frombuffer")] = "_frombuffer"
    for fmt, cls in (("csc", sp.csc_matrix), ("csr", sp.csr_matrix), ("coo", sp.coo_matrix)):
        for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):  # scipy < 1.8 and >= 1.8
            allowed[(module, f"{fmt}_matrix")] = cls
    for builtins_module, copyreg_module in (("builtins", "copyreg"), ("__builtin__", "copy_reg")):  # py3, py2
        allowed[(builtins_module, "object")] = object
        allowed[(builtins_module, "set")] = set
        allowed[(builtins_module, "frozenset")] = frozenset
        allowed[(builtins_module, "bytes")] = "_empty_bytes"  # empty bytes in protocol-2 pickles written by Python 3
        allowed[(copyreg_module, "_reconstructor")] = copyreg._reconstructor
    return allowed


_ALLOWED = _allowed_globals()


class SafeUnpickler(_InMemoryUnpickler):
    """Unpickles ``data`` through the allow-list and the size limits (see module docstring)."""

    dispatch = dict(_InMemoryUnpickler.dispatch)

    def __init__(self, data: bytes) -> None:
        _check_file_size(len(data))
        super().__init__(_Data(data))
        self._unbuilt: dict[int, np.ndarray] = {}  # id -> placeholder from _reconstruct, until BUILD
        self._budget = MAX_BUILT_BYTES

    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return ChumpyObject
        try:
            target = _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global '{module}.{name}': not on the allow-list of data types "
                "(numpy, scipy.sparse, torch tensors, chumpy arrays); the file may be malicious or not a data file"
            ) from None
        return getattr(self, target) if isinstance(target, str) else target

    def _charge(self, nbytes: int, what: str) -> None:
        """Refuse ``what`` of ``nbytes`` beyond ``MAX_ARRAY_BYTES`` or this file's budget; else spend it."""
        _check_bytes(nbytes, what)
        self._budget -= nbytes
        if self._budget < 0:
            raise pickle.UnpicklingError(f"refusing {what}: the file's arrays would take more than "
                                         f"{MAX_BUILT_BYTES} bytes, more than any FLAME file holds")

    # -- stand-ins for allow-listed callables --
    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        """numpy's empty placeholder array, whose state BUILD then sets once."""
        if subtype is not _NdarrayType or _count(shape) != 0:
            raise pickle.UnpicklingError("malformed pickled numpy array")
        array = _reconstruct(np.ndarray, shape, dtype)
        self._unbuilt[id(array)] = array
        return array

    def _frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
        dtype = _own_dtype(dtype)
        self._charge(_count(shape) * max(dtype.itemsize, 1), f"a numpy array of shape {shape} and dtype {dtype}")
        return _frombuffer(buffer, dtype, shape, order)

    def _scalar(self, dtype: Any, *value: Any) -> Any:
        dtype = _own_dtype(dtype)
        self._charge(dtype.itemsize, f"a numpy scalar of dtype {dtype}")
        return scalar(dtype, *value)

    def _rebuild_tensor(self, storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
        """``torch._utils._rebuild_tensor_v2`` on a real storage, without hooks, of a size checked first
        (a strided view can be far bigger than its storage)."""
        if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)) or backward_hooks:
            raise pickle.UnpicklingError("malformed pickled torch tensor")
        itemsize = storage.dtype.itemsize if isinstance(storage, torch.storage.TypedStorage) else 1
        self._charge(_count(size) * itemsize, f"a torch tensor of size {size}")
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks, metadata)

    def _load_storage_from_bytes(self, data: bytes) -> torch.storage.TypedStorage:
        """``torch.storage._load_from_bytes`` with torch's own weights-only unpickler, once the storage
        sizes the payload declares are checked against the data it holds."""
        if not isinstance(data, bytes):
            raise pickle.UnpicklingError("torch storage payload must be bytes")
        declared = _declared_storage_bytes(data)
        if declared > len(data):
            raise pickle.UnpicklingError(f"refusing a torch storage payload that declares {declared} bytes of "
                                         f"storage but holds {len(data)}; the file is damaged or forged")
        self._charge(declared, "a torch storage")
        return torch.load(io.BytesIO(data), weights_only=True)

    @staticmethod
    def _empty_bytes(*args: Any) -> bytes:
        """``bytes()``; ``bytes(n)`` would allocate n."""
        if args:
            raise pickle.UnpicklingError("refusing bytes(...) with arguments: pickles only call bytes()")
        return b""

    # -- BUILD (setting an object's state) --
    def load_build(self) -> None:
        """BUILD, only on the objects the formats set a state on, and after checking that state."""
        obj, state = self.stack[-2], self.stack[-1]
        if isinstance(obj, np.ndarray):
            self.stack[-1] = self._array_state(obj, state)
        elif sp.issparse(obj):
            self._check_sparse_state(obj, state)
        elif not isinstance(obj, (np.dtype, ChumpyObject)):
            raise pickle.UnpicklingError(f"refusing to set the state of a {type(obj).__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def _array_state(self, array: np.ndarray, state: Any) -> tuple:
        """numpy's ``([version,] shape, dtype, fortran, data)``, checked before numpy allocates the shape;
        set once, on a placeholder from ``_reconstruct``, with a dtype of its own."""
        if self._unbuilt.pop(id(array), None) is not array:
            raise pickle.UnpicklingError("refusing to set the state of a numpy array twice")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed pickled numpy array")
        *version, shape, dtype, fortran, data = state
        dtype = _own_dtype(dtype)
        count = _count(shape)
        what = f"a numpy array of shape {shape} and dtype {dtype}"
        self._charge(count * max(dtype.itemsize, 1), what)
        if dtype.hasobject:
            matches = isinstance(data, list) and len(data) == count
        else:
            matches = isinstance(data, (bytes, str)) and len(data) == count * dtype.itemsize
        if not matches:
            raise pickle.UnpicklingError(f"refusing {what}: its data does not match its shape")
        return (*version, shape, dtype, fortran, data)

    def _check_sparse_state(self, matrix: Any, state: Any) -> None:
        """A csc/csr/coo matrix's state, checked before anything allocates by its shape: a dense form
        within the limits, and index arrays that agree with the data and lie within the shape."""
        name = f"scipy.sparse {type(matrix).__name__}"
        shape = state.get("_shape") if isinstance(state, dict) else None
        data = state.get("data") if isinstance(state, dict) else None
        if not (isinstance(shape, tuple) and len(shape) == 2 and isinstance(data, np.ndarray) and data.ndim == 1):
            raise pickle.UnpicklingError(f"malformed pickled {name}")
        self._charge(_count(shape) * max(data.itemsize, 1), f"a {name} of shape {shape} (as a dense array)")
        rows, cols = (int(n) for n in shape)
        if isinstance(matrix, sp.coo_matrix):
            coords = state.get("coords", (state.get("row"), state.get("col")))
            valid = (isinstance(coords, tuple) and len(coords) == 2
                     and _is_index(coords[0], len(data), rows) and _is_index(coords[1], len(data), cols))
        else:
            major, minor = (cols, rows) if isinstance(matrix, sp.csc_matrix) else (rows, cols)
            indptr = state.get("indptr")
            valid = (_is_index(indptr, major + 1, len(data) + 1) and indptr[0] == 0
                     and bool((indptr[1:] >= indptr[:-1]).all()) and _is_index(state.get("indices"), len(data), minor))
        if not valid:
            raise pickle.UnpicklingError(f"refusing a {name} of shape {shape}: its index arrays do not match "
                                         "its data and shape")


def load_pickle(path_or_file: str | Path | BinaryIO) -> Any:
    """Unpickle a file through the allow-list and the size limits."""
    if isinstance(path_or_file, (str, Path)):
        _check_file_size(os.path.getsize(path_or_file))
        return SafeUnpickler(Path(path_or_file).read_bytes()).load()
    return SafeUnpickler(path_or_file.read()).load()


def load_npy_object(path: str | Path) -> Any:
    """Read a ``.npy`` file; an object array's pickle payload goes through the allow-list.

    Returns the item of a 0-d object array (e.g. DECA's dict), otherwise the array.
    """
    _check_file_size(os.path.getsize(path))
    with open(path, "rb") as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        if not dtype.hasobject:
            _check_bytes(math.prod(shape) * dtype.itemsize, f"a .npy array of shape {shape} and dtype {dtype}")
            f.seek(0)
            return npy_format.read_array(f, allow_pickle=False)
        array = SafeUnpickler(f.read()).load()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"the .npy payload is a {type(array).__name__}, not an array")
    return array.item() if array.shape == () else array


def to_numpy(obj: Any) -> np.ndarray:
    """chumpy stand-in, scipy sparse matrix, torch tensor or array-like -> dense ``np.ndarray``."""
    if isinstance(obj, ChumpyObject):
        return obj.array
    if sp.issparse(obj):
        return obj.toarray()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    return np.asarray(obj)
