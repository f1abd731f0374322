"""String and text ops: StringNormalizer, RegexFullMatch, StringConcat, StringSplit over object arrays, and
TfIdfVectorizer (n-gram counts over integer or string tokens).

Strings are Python ``str`` objects in object arrays (bytes are decoded as UTF-8 on the way in);
they only ever live on the host, so these kernels use NumPy directly.
"""
from __future__ import annotations

import re
from itertools import repeat

import numpy as np

from engineroom.providers.cpu.registry import kernel


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


def _obj(values: list[str], shape) -> np.ndarray:
    # str items are scalars to np.array: one call (~0.25 us less than filling an empty object array)
    return np.array(values, dtype=object).reshape(shape)


@kernel("StringNormalizer", since=10)
def string_normalizer(info):
    a = info.attrs
    action = a.get("case_change_action", "NONE")
    sensitive = bool(a.get("is_case_sensitive", 0))
    stop = list(a.get("stopwords") or [])
    stopset = set(stop) if sensitive else {s.lower() for s in stop}
    change = {"LOWER": str.lower, "UPPER": str.upper}.get(action)

    def run(x):
        items = [v if v.__class__ is str else _text(v) for v in x.reshape(-1).tolist()]
        if stopset:
            items = [s for s in items if (s if sensitive else s.lower()) not in stopset]
        if change is not None:
            items = list(map(change, items))
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


# ---------------------------------------------------------------------------------------------------
# TfIdfVectorizer

_GAP = object()   # between rows in TfIdfVectorizer's walk: equal to no token
# TfIdfVectorizer outputs of this many elements on count their hits into zeros, without bincount's int64
# pass over the whole output and the cast after it (400K counts: ~280 -> ~165 us); below, bincount's
# smaller fixed cost wins
_WIDE_COUNTS = 1 << 16
_LONG_WALK = 1024     # walks (tokens and row gaps) from this length on find their hits' rows with NumPy


@kernel("TfIdfVectorizer", since=9)
def tfidf_vectorizer(info):
    xp = info.xp
    a = info.attrs
    mode = a.get("mode", "TF")
    min_n, max_n = int(a["min_gram_length"]), int(a["max_gram_length"])
    max_skip = int(a["max_skip_count"])
    starts = [int(s) for s in a["ngram_counts"]]
    out_idx = np.asarray(a["ngram_indexes"], dtype=np.int64)
    width = int(out_idx.max()) + 1 if out_idx.size else 0
    weights = np.asarray(a["weights"], dtype=np.float32) if a.get("weights") is not None else \
        np.ones(out_idx.size, dtype=np.float32)
    pool = list(a["pool_strings"]) if a.get("pool_strings") is not None else \
        np.asarray(a["pool_int64s"], dtype=np.int64)
    is_str = a.get("pool_strings") is not None
    if any(not 0 <= s <= len(pool) for s in starts) or starts != sorted(starts):
        raise ValueError(f"TfIdfVectorizer: ngram_counts {starts} must be increasing offsets into the pool of "
                         f"{len(pool)} entries")
    # Each pool n-gram is counted into a slot: its output column where no two n-grams share one (the
    # usual case; the weights then move to those columns too), else its pool position, summed into the
    # columns after counting. One table per n (the pool is laid out 1-grams, 2-grams, ...); 1-grams are
    # keyed by the bare item, longer ones by the tuple of items.
    n_grams = sum(((starts[k + 1] if k + 1 < len(starts) else len(pool)) - s) // (k + 1)
                  for k, s in enumerate(starts))
    by_column = n_grams == out_idx.size and np.unique(out_idx).size == out_idx.size
    tables: dict[int, dict] = {}
    gram_no = 0
    for k, s in enumerate(starts):
        n = k + 1
        end = starts[k + 1] if k + 1 < len(starts) else len(pool)
        t = tables.setdefault(n, {})
        for p in range(s, end, n):
            key = tuple(pool[p:p + n]) if is_str else tuple(int(v) for v in pool[p:p + n])
            t[key[0] if n == 1 else key] = int(out_idx[gram_no]) if by_column else gram_no
            gram_no += 1
    # no pool n-gram is longer than the tables' largest n: a huge max_gram_length loops no further
    max_n = min(max_n, max(tables, default=0))
    n_slots = width if by_column else out_idx.size
    slot_weights = weights
    if by_column:
        slot_weights = np.zeros(width, np.float32)
        slot_weights[out_idx] = weights[:out_idx.size]
    bincount, f32 = np.bincount, np.float32
    walks: dict[int, tuple] = {}   # row length -> its passes and gap (below)

    def walk_for(n_cols: int):
        """(passes, gap) for rows of ``n_cols`` items: (n, step, table) per pass over a row, the n-grams
        that fit in a row only (1-grams are counted once: skipping changes nothing for them); rows are
        walked as one list with a gap of markers after each, as long as the longest step, so an n-gram
        that would reach into the next row holds a marker, which no table has."""
        passes = []
        for n in range(max(min_n, 1), max_n + 1):
            if tables.get(n):
                for skip in range(0, (max_skip if n > 1 else 0) + 1):
                    if (n - 1) * (skip + 1) + 1 > n_cols:
                        break
                    passes.append((n, skip + 1, tables[n]))
        if len(walks) > 64:   # inputs of ever new widths keep no more than a few
            walks.clear()
        walks[n_cols] = w = (passes, [_GAP] * max((st for _, st, _ in passes), default=1))
        return w

    def run(x):
        one_d = x.ndim == 1
        rows = x.reshape(1, -1) if one_d else x
        w = walks.get(rows.shape[1])
        passes, gap = w if w is not None else walk_for(rows.shape[1])
        n_rows, stride = rows.shape[0], rows.shape[1] + len(gap)
        flat = []
        for row in rows.tolist():
            flat += row
            flat += gap
        long_walk = len(flat) >= _LONG_WALK
        slots = []
        for n, step, t in passes:
            if n == 1:
                grams = flat
            else:   # (bigrams: one slice, no list of them)
                grams = zip(flat, flat[step:]) if n == 2 else zip(*[flat[k * step:] for k in range(n)])
            if long_walk:
                # each gram's slot or -1 in one map, the hits' rows found by NumPy
                ids = np.array(list(map(t.get, grams, repeat(-1))), np.int64)
                pos = np.flatnonzero(ids >= 0)
                slots.append(pos // stride * n_slots + ids[pos])
            else:
                slots += [p // stride * n_slots + g for p, g in enumerate(map(t.get, grams)) if g is not None]
        if long_walk:
            slots = np.concatenate(slots) if slots else np.empty(0, np.int64)
        size = n_rows * n_slots
        if size >= _WIDE_COUNTS:
            # the hits counted into zeros: no int64 pass over the whole output and cast after it
            counts = np.zeros(size, f32)
            np.add.at(counts, slots, 1)
        else:
            counts = bincount(slots, minlength=size).astype(f32)
        counts = counts.reshape(n_rows, n_slots)
        if mode == "IDF":
            counts = np.minimum(counts, 1) * slot_weights
        elif mode == "TFIDF":
            counts = counts * slot_weights
        if by_column:
            out = counts
        else:
            out = np.zeros((n_rows, width), dtype=np.float32)
            # Several pool entries share an output coordinate: accumulate.
            np.add.at(out, (slice(None), out_idx), counts)
        return (xp.asarray(out[0] if one_d else out),)

    return run
