"""Text contrib kernels (com.microsoft): Tokenizer, which skl2onnx writes for scikit-learn's text
vectorizers (CountVectorizer / TfidfVectorizer) ahead of TfIdfVectorizer."""
from __future__ import annotations

import re

import numpy as np

from engineroom.providers.cpu._contrib import host_kernel

MS = "com.microsoft"
_START, _END = "\x02", "\x03"


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


@host_kernel("Tokenizer", MS, since=1)
def tokenizer(info):
    """Splits each string of a [C] or [N, C] tensor into tokens; the output adds an axis of the longest
    row's token count, rows padded with ``pad_value`` (after the end marker when ``mark`` is set).

    - ``tokenexp``: the tokens are the regex's successive matches; a match shorter than ``mincharnum``
      characters is dropped and the search resumes one character after where it began. ``"."`` means
      one token per character.
    - ``separators``: a list of regexes applied in turn; each splits every piece kept so far, pieces
      shorter than ``mincharnum`` are dropped, and a row with nothing left stays empty. ``[""]`` means
      one token per character.

    onnxruntime compiles the expressions with RE2 in leftmost-longest mode; Python's ``re`` takes the
    leftmost-first alternative, which differs only for alternations where an earlier branch matches a
    prefix of a later one (the character classes and repetitions converters write agree).
    """
    a = info.attrs
    mark = bool(int(a.get("mark", 0)))
    pad = _text(a.get("pad_value", ""))
    mincharnum = int(a.get("mincharnum", 1))
    if mincharnum < 1:
        raise ValueError("Tokenizer: attribute mincharnum must have a positive value")
    seps = [_text(s) for s in (a.get("separators") or [])]
    tokenexp = _text(a.get("tokenexp") or "")
    if not seps and not tokenexp:
        raise ValueError("Tokenizer: either one of the separators or tokenexp attributes is required")
    by_char = (seps == [""]) if seps else tokenexp == "."
    if by_char and mincharnum >= 2:
        raise ValueError("Tokenizer: mincharnum is too big for char level tokenization")
    try:
        sep_res = [re.compile(s) for s in seps] if seps and not by_char else []
        tok_re = re.compile(tokenexp) if tokenexp and not seps and not by_char else None
    except re.error as e:
        raise ValueError(f"Tokenizer: cannot compile the expression: {e}") from e

    def split_by(text, sep):
        out, start = [], 0
        while True:
            m = sep.search(text, start)
            if m is None:
                tail = text[start:]
                if len(tail) >= mincharnum:
                    out.append(tail)
                return out
            piece = text[start:m.start()]
            if len(piece) >= mincharnum:
                out.append(piece)
            start = m.end() if m.end() > m.start() else m.start() + 1
            if start > len(text):
                return out

    # the regex's successive matches are re's own findall where none of them is shorter than mincharnum
    # (nor empty): the search loop below would take the same matches, each from the last one's end
    findall = tok_re.findall if tok_re is not None and tok_re.groups == 0 else None

    def tokens_of(s):
        if by_char:
            return list(s)
        if findall is not None:
            row = findall(s)
            if ("" not in row) if mincharnum == 1 else (not row or min(map(len, row)) >= mincharnum):
                return row
        if tok_re is not None:
            row, pos = [], 0
            if len(s) < mincharnum:
                return row
            while True:
                m = tok_re.search(s, pos)
                if m is None:
                    return row
                if len(m.group(0)) >= mincharnum:
                    row.append(m.group(0))
                    pos = m.end() if m.end() > m.start() else m.start() + 1
                else:
                    pos = m.start() + 1
                if pos > len(s):
                    return row
        row = [s]
        for sep in sep_res:
            row = [t for piece in row for t in split_by(piece, sep)]
            if not row:
                break
        return row

    def run(x):
        if x.ndim not in (1, 2):
            raise ValueError(f"Tokenizer: input dimensions are either [C] or [N][C], got shape {x.shape}")
        rows = [tokens_of(v if v.__class__ is str else _text(v)) for v in x.reshape(-1).tolist()]
        longest = max(map(len, rows), default=0)
        if longest == 0:
            return (np.empty(x.shape + (0,), dtype=object),)
        width = longest + 2 * mark
        # the padded rows as one flat list, filled in one assignment
        flat = []
        for r in rows:
            if mark:
                flat.append(_START)
                flat += r
                flat.append(_END)
            else:
                flat += r
            flat += [pad] * (longest - len(r))
        # str items are scalars to np.array: one call (~0.25 us less than filling an empty object array)
        return (np.array(flat, dtype=object).reshape(x.shape + (width,)),)

    return run
