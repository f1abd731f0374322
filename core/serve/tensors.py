"""Tensors as the Open Inference Protocol carries them: datatype names, JSON data, raw bytes.

One codec for REST (JSON and the binary tensor data extension), gRPC (typed contents and raw
contents) and the Ray deployment, so every front end accepts and answers the same tensors.
"""
from __future__ import annotations

import struct

import numpy as np

from engineroom.serve.errors import BadRequest

# Protocol datatype -> NumPy dtype (BYTES are object arrays of bytes, as onnxruntime returns strings).
_NP = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
# onnxruntime's element-type spelling (``tensor(float)``) -> protocol datatype.
_FROM_ORT = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
    "float": "FP32", "double": "FP64", "string": "BYTES", "bfloat16": "BF16",
}
# gRPC typed-contents field for each datatype (FP16 / BF16 travel only as raw bytes, per the protocol).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def np_dtype(datatype: str) -> np.dtype:
    """NumPy dtype of a protocol datatype; an unknown name is a bad request."""
    if datatype == "BF16":
        return _bf16()
    try:
        return _NP[datatype]
    except KeyError:
        raise BadRequest(f"unknown datatype '{datatype}' (expected one of {', '.join([*_NP, 'BF16'])})") from None


def datatype_of_type_string(type_string: str) -> str:
    """Protocol datatype for a session's ``tensor(float)``-style type string."""
    if type_string.startswith("tensor(") and type_string.endswith(")"):
        dt = _FROM_ORT.get(type_string[len("tensor("):-1])
        if dt:
            return dt
    raise ValueError(f"type {type_string} has no Open Inference Protocol datatype")


def datatype_of_array(a: np.ndarray) -> str:
    if a.dtype.kind in "OUS":
        return "BYTES"
    if a.dtype == _bf16():
        return "BF16"
    for name, dt in _NP.items():
        if dt == a.dtype:
            return name
    raise ValueError(f"dtype {a.dtype} has no Open Inference Protocol datatype")


def check_shape(name: str, shape) -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise BadRequest(f"input '{name}': shape must be a list of integers, got {shape!r}") from None
    if any(d < 0 for d in out):
        raise BadRequest(f"input '{name}': shape {list(out)} has a negative dimension")
    return out


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _flatten(data):
    """Row-major flattening of JSON data given flat or nested (the protocol allows both)."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def from_json(name: str, datatype: str, shape, data) -> np.ndarray:
    """An input tensor from the JSON ``data`` field."""
    shape = check_shape(name, shape)
    dtype = np_dtype(datatype)
    flat = _flatten(data)
    if len(flat) != _count(shape):
        raise BadRequest(f"input '{name}': {len(flat)} values in 'data' for shape {list(shape)} "
                         f"({_count(shape)} expected)")
    try:
        if datatype == "BYTES":
            a = np.empty(len(flat), dtype=object)
            a[:] = [v.encode() if isinstance(v, str) else bytes(v) for v in flat]
        elif datatype == "BOOL":
            if not all(isinstance(v, bool) for v in flat):
                raise BadRequest(f"input '{name}': BOOL data must be true/false")
            a = np.asarray(flat, dtype=bool)
        else:
            if any(isinstance(v, (str, list, dict)) or v is None for v in flat):
                raise BadRequest(f"input '{name}': {datatype} data must be numbers")
            a = np.asarray(flat, dtype=dtype if datatype != "BF16" else np.float32).astype(dtype, copy=False)
    except (TypeError, ValueError, OverflowError) as e:
        raise BadRequest(f"input '{name}': data does not fit {datatype}: {e}") from None
    return a.reshape(shape)


def from_bytes(name: str, datatype: str, shape, raw: bytes | memoryview) -> np.ndarray:
    """An input tensor from raw bytes (binary extension or gRPC raw_input_contents)."""
    shape = check_shape(name, shape)
    n = _count(shape)
    if datatype == "BYTES":
        items, pos, raw = [], 0, bytes(raw)
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise BadRequest(f"input '{name}': BYTES data ends inside a 4-byte length prefix")
            (ln,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + ln > len(raw):
                raise BadRequest(f"input '{name}': BYTES element of {ln} bytes runs past the data")
            items.append(raw[pos:pos + ln])
            pos += ln
        if len(items) != n:
            raise BadRequest(f"input '{name}': {len(items)} BYTES elements for shape {list(shape)} ({n} expected)")
        a = np.empty(n, dtype=object)
        a[:] = items
        return a.reshape(shape)
    dtype = np_dtype(datatype)
    if len(raw) != n * dtype.itemsize:
        raise BadRequest(f"input '{name}': {len(raw)} bytes of data for {datatype} shape {list(shape)} "
                         f"({n * dtype.itemsize} expected)")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_bytes(a: np.ndarray) -> bytes:
    """Raw bytes of an output tensor: row-major little-endian, BYTES with 4-byte length prefixes."""
    if a.dtype.kind in "OUS":
        parts = []
        for v in a.reshape(-1):
            b = v.encode() if isinstance(v, str) else bytes(v)
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(a).tobytes()


def to_json_data(a: np.ndarray) -> list:
    """Flat JSON data of an output tensor (BYTES as text where it decodes, FP16/BF16 as numbers)."""
    flat = a.reshape(-1)
    if a.dtype.kind in "OUS":
        out = []
        for v in flat:
            if isinstance(v, bytes):
                try:
                    v = v.decode()
                except UnicodeDecodeError:
                    raise BadRequest("a BYTES output is not UTF-8: ask for it as binary data") from None
            out.append(v)
        return out
    if a.dtype == np.float16 or a.dtype.kind == "V" or a.dtype == _bf16():
        return flat.astype(np.float32).tolist()
    return flat.tolist()
