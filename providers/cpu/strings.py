"""String ops over object arrays: StringNormalizer, RegexFullMatch, StringConcat, StringSplit.

Strings are Python ``str`` objects in object arrays (bytes are decoded as UTF-8 on the way in);
they only ever live on the host, so these kernels use NumPy directly.
"""
from __future__ import annotations

import re

import numpy as np

from engineroom.providers.cpu.registry import kernel


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


def _obj(values, shape) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


@kernel("StringNormalizer", since=10)
def string_normalizer(info):
    a = info.attrs
    action = a.get("case_change_action", "NONE")
    sensitive = bool(a.get("is_case_sensitive", 0))
    stop = list(a.get("stopwords") or [])
    stopset = set(stop) if sensitive else {s.lower() for s in stop}
    change = {"LOWER": str.lower, "UPPER": str.upper}.get(action)

    def run(x):
        items = [_text(v) for v in x.reshape(-1)]
        if stopset:
            items = [s for s in items if (s if sensitive else s.lower()) not in stopset]
        if change is not None:
            items = [change(s) for s in items]
        if not items:
            # Everything dropped: one empty string, keeping the input's rank ([C] -> [1], [1, C] -> [1, 1]).
            items = [""]
        shape = (len(items),) if x.ndim == 1 else (1, len(items))
        return (_obj(items, shape),)

    return run


@kernel("RegexFullMatch", since=20)
def regex_full_match(info):
    # Python's `re` accepts the RE2 syntax the ONNX tests use (RE2 is a subset apart from a few
    # escapes); fullmatch is exactly RE2's FullMatch.
    pattern = re.compile(info.attrs.get("pattern", ""))

    def run(x):
        flat = [pattern.fullmatch(_text(v)) is not None for v in x.reshape(-1)]
        return (np.array(flat, dtype=bool).reshape(x.shape),)

    return run


_concat = np.frompyfunc(lambda a, b: _text(a) + _text(b), 2, 1)


@kernel("StringConcat", since=20)
def string_concat(x, y):
    # frompyfunc broadcasts like any ufunc; a 0-d result comes back as a bare str, hence asarray.
    out = _concat(x, y)
    return np.asarray(out, dtype=object) if not isinstance(out, np.ndarray) else out.astype(object, copy=False)


@kernel("StringSplit", since=20)
def string_split(info):
    delim = info.attrs.get("delimiter") or None   # None: split on whitespace runs, strip the ends
    maxsplit = info.attrs.get("maxsplit")
    maxsplit = -1 if maxsplit is None else int(maxsplit)

    def run(x):
        parts = [_text(v).split(delim, maxsplit) for v in x.reshape(-1)]
        counts = np.array([len(p) for p in parts], dtype=np.int64).reshape(x.shape)
        width = max((len(p) for p in parts), default=0)
        out = np.full((len(parts), width), "", dtype=object)
        for i, p in enumerate(parts):
            out[i, :len(p)] = p
        return out.reshape(x.shape + (width,)), counts

    return run
