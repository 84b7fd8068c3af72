"""A minimal safetensors reader/writer for the model file's header and for writing model
files with metadata (the C ABI builds models without metadata).

Format: 8-byte little-endian header length, a JSON header (tensor dtype, shape, byte
offsets, and a ``__metadata__`` map of strings), then the raw little-endian tensor bytes.
"""

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Union

import numpy as np

_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64"}

PathLike = Union[str, "os.PathLike[str]"]


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The ``__metadata__`` map of a safetensors file ({} when absent)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        header = json.loads(f.read(n).decode("utf-8"))
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def serialize(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` (F32/F64 only) and ``metadata``."""
    header: Dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    chunks = []
    offset = 0
    for name, arr in tensors.items():
        a = np.array(arr, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if a.dtype not in _DTYPES:
            raise TypeError(f"tensor {name}: dtype {a.dtype} is not float32/float64")
        data = a.tobytes()
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def write_atomic(path: PathLike, data: bytes) -> None:
    """Writes ``data`` to a temporary file in the target folder, flushes it, renames it over
    ``path``; on any error the target is untouched and the temporary file removed."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def model_tensors(mean, eigvals, eigvecs, residual_var: float) -> Dict[str, np.ndarray]:
    """The four tensors of a model file, in the dtypes the library writes."""
    return {
        "mean": np.asarray(mean, dtype="<f4"),
        "eigvals": np.asarray(eigvals, dtype="<f8"),
        "eigvecs": np.asarray(eigvecs, dtype="<f4"),
        "residual_var": np.asarray(residual_var, dtype="<f8").reshape(()),
    }
