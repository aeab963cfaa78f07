"""Allow-list unpickling for the FLAME ecosystem's pickle files (``.pkl``, object ``.npy``).

Plain ``pickle.load`` runs whatever a file names. This unpickler resolves only the globals that
numpy arrays, scipy sparse matrices, torch tensors (DECA's ``landmark_embedding.npy``) and
chumpy objects (FLAME 2020) need, and refuses any other with ``pickle.UnpicklingError``.
chumpy itself is never imported: every ``chumpy.*`` class becomes ``ChumpyObject``.
"""

from __future__ import annotations

import _codecs
import collections
import copyreg
import io
import pickle
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


def _load_storage_from_bytes(data: bytes) -> torch.storage.TypedStorage:
    """``torch.storage._load_from_bytes`` with torch's own weights-only unpickler."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError("torch storage payload must be bytes")
    return torch.load(io.BytesIO(data), weights_only=True)


def _rebuild_tensor(storage, offset, size, stride, requires_grad, backward_hooks, metadata=None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` restricted to real storages and no hooks."""
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)) or backward_hooks:
        raise pickle.UnpicklingError("malformed pickled torch tensor")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks, metadata)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) as a pickle names it -> the object it resolves to."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _codecs.encode,  # bytes in protocol-2 pickles written by Python 3
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    for fmt, cls in (("csc", sp.csc_matrix), ("csr", sp.csr_matrix), ("coo", sp.coo_matrix)):
        for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):  # scipy < 1.8 and >= 1.8
            allowed[(module, f"{fmt}_matrix")] = cls
    for builtins_module, copyreg_module in (("builtins", "copyreg"), ("__builtin__", "copy_reg")):  # py3, py2
        allowed[(builtins_module, "object")] = object
        allowed[(builtins_module, "set")] = set
        allowed[(builtins_module, "frozenset")] = frozenset
        allowed[(builtins_module, "bytes")] = bytes  # empty bytes in protocol-2 pickles written by Python 3
        allowed[(copyreg_module, "_reconstructor")] = copyreg._reconstructor
    return allowed


_ALLOWED = _allowed_globals()


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (see module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return ChumpyObject
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global '{module}.{name}': not on the allow-list of data types "
                "(numpy, scipy.sparse, torch tensors, chumpy arrays); the file may be malicious or not a data file"
            ) from None


def load_pickle(path_or_file: str | Path | BinaryIO) -> Any:
    """Unpickle a file through the allow-list (``latin1`` so Python 2 pickles load)."""
    if isinstance(path_or_file, (str, Path)):
        with open(path_or_file, "rb") as f:
            return SafeUnpickler(f, encoding="latin1").load()
    return SafeUnpickler(path_or_file, encoding="latin1").load()


def load_npy_object(path: str | Path) -> Any:
    """Read a ``.npy`` file; an object array's pickle payload goes through the allow-list.

    Returns the item of a 0-d object array (e.g. DECA's dict), otherwise the array.
    """
    with open(path, "rb") as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            _, _, dtype = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            _, _, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        if not dtype.hasobject:
            f.seek(0)
            return npy_format.read_array(f, allow_pickle=False)
        array = SafeUnpickler(f, encoding="latin1").load()
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
