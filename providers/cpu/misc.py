"""Assorted ops: NonMaxSuppression, Det, TfIdfVectorizer, ImageDecoder, and the training optimizers
Adagrad / Adam / Momentum of ``ai.onnx.preview.training``.
"""
from __future__ import annotations

import io

import numpy as np

from engineroom.providers.cpu.registry import array_kernel, kernel

_TRAINING = "ai.onnx.preview.training"


# ---------------------------------------------------------------------------------------------------
# NonMaxSuppression


def _corners(boxes, center_point_box: int):
    """(..., 4) boxes -> y_min, x_min, y_max, x_max (corner pairs may come in either order)."""
    b = boxes.astype(np.float64, copy=False)
    if center_point_box:
        xc, yc, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
        return yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2
    y1, x1, y2, x2 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)


def _nms_one(ymin, xmin, ymax, xmax, area, scores, max_out: int, iou_thr: float, score_thr):
    """Greedy NMS over one (batch, class): indices of kept boxes in selection order."""
    cand = np.arange(scores.shape[0])
    if score_thr is not None:
        cand = cand[scores > score_thr]
    # Highest score first; ties keep the lower box index first (stable sort of the negated scores).
    cand = cand[np.argsort(-scores[cand], kind="stable")]
    keep: list[int] = []
    while cand.size and len(keep) < max_out:
        i = cand[0]
        keep.append(int(i))
        rest = cand[1:]
        # IoU of the selected box against every remaining candidate, at once.
        ih = np.minimum(ymax[i], ymax[rest]) - np.maximum(ymin[i], ymin[rest])
        iw = np.minimum(xmax[i], xmax[rest]) - np.maximum(xmin[i], xmin[rest])
        inter = np.clip(ih, 0, None) * np.clip(iw, 0, None)
        union = area[i] + area[rest] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where((area[i] > 0) & (area[rest] > 0) & (union > 0), inter / union, 0.0)
        cand = rest[iou <= iou_thr]
    return keep


@kernel("NonMaxSuppression", since=10, host_inputs=(2, 3, 4))
def non_max_suppression(boxes, scores, max_output_boxes_per_class=None, iou_threshold=None, score_threshold=None,
                        *, xp, center_point_box=0):
    # Greedy selection is sequential by nature and the inputs are small: run it on the host.
    max_out = 0 if max_output_boxes_per_class is None else int(np.asarray(max_output_boxes_per_class).reshape(-1)[0])
    iou_thr = 0.0 if iou_threshold is None else float(np.asarray(iou_threshold).reshape(-1)[0])
    score_thr = None if score_threshold is None else float(np.asarray(score_threshold).reshape(-1)[0])
    rows = []
    if max_out > 0:
        ymin, xmin, ymax, xmax = _corners(boxes, center_point_box)
        area = (ymax - ymin) * (xmax - xmin)
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                keep = _nms_one(ymin[b], xmin[b], ymax[b], xmax[b], area[b], scores[b, c].astype(np.float64),
                                max_out, iou_thr, score_thr)
                rows.extend((b, c, k) for k in keep)
    out = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return xp.asarray(out)


# ---------------------------------------------------------------------------------------------------
# Det


@array_kernel("Det", since=11)
def det(x, *, xp):
    calc = np.float32 if x.dtype.itemsize < 4 else x.dtype
    return xp.asarray(xp.linalg.det(x.astype(calc, copy=False))).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------
# TfIdfVectorizer


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
    # n-gram -> its pool position, one table per n (the pool is laid out 1-grams, 2-grams, ...).
    tables: dict[int, dict] = {}
    gram_no = 0
    for k, s in enumerate(starts):
        n = k + 1
        end = starts[k + 1] if k + 1 < len(starts) else len(pool)
        t = tables.setdefault(n, {})
        for p in range(s, end, n):
            key = tuple(pool[p:p + n]) if is_str else tuple(int(v) for v in pool[p:p + n])
            t[key] = gram_no
            gram_no += 1
    # no pool n-gram is longer than the tables' largest n: a huge max_gram_length loops no further
    max_n = min(max_n, max(tables, default=0))

    def run(x):
        xh = x
        one_d = xh.ndim == 1
        rows = xh.reshape(1, -1) if one_d else xh
        counts = np.zeros((rows.shape[0], out_idx.size), dtype=np.float32)
        for n in range(max(min_n, 1), max_n + 1):
            t = tables.get(n)
            if not t:
                continue
            # 1-grams are counted once: skipping changes nothing about a single item.
            for skip in range(0, (max_skip if n > 1 else 0) + 1):
                step = skip + 1
                span = (n - 1) * step + 1
                if span > rows.shape[1]:
                    break
                for r in range(rows.shape[0]):
                    row = rows[r].tolist()
                    for st in range(0, rows.shape[1] - span + 1):
                        g = t.get(tuple(row[st:st + span:step]))
                        if g is not None:
                            counts[r, g] += 1
        if mode == "IDF":
            counts = np.minimum(counts, 1) * weights
        elif mode == "TFIDF":
            counts = counts * weights
        out = np.zeros((rows.shape[0], width), dtype=np.float32)
        # Several pool entries may share an output coordinate: accumulate.
        np.add.at(out, (slice(None), out_idx), counts)
        return (xp.asarray(out[0] if one_d else out),)

    return run


# ---------------------------------------------------------------------------------------------------
# ImageDecoder


@kernel("ImageDecoder", since=20)
def image_decoder(encoded_stream, *, xp, pixel_format="RGB"):
    # Pillow is an optional extra (engineroom[image]); import it only when a model needs it.
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise RuntimeError("ImageDecoder needs Pillow: pip install engineroom[image]") from e
    channels = 1 if pixel_format == "Grayscale" else 3
    data = np.asarray(encoded_stream, dtype=np.uint8).tobytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - the spec asks for an empty result on any decoding failure
        return xp.zeros((0, 0, channels), dtype=np.uint8)
    if channels == 1:
        arr = arr[..., None]
    elif pixel_format == "BGR":
        arr = arr[..., ::-1]
    return xp.asarray(np.ascontiguousarray(arr))


# ---------------------------------------------------------------------------------------------------
# Training optimizers (ai.onnx.preview.training)


def _scalar(v) -> float:
    return float(np.asarray(v).reshape(-1)[0])


@kernel("Adagrad", domain=_TRAINING, since=1)
def adagrad(info):
    decay = float(info.attrs.get("decay_factor", 0.0))
    eps = float(info.attrs.get("epsilon", 1e-6))
    norm = float(info.attrs.get("norm_coefficient", 0.0))
    xp = info.xp

    def run(R, T, *tensors):
        n = len(tensors) // 3
        r = _scalar(R) / (1 + _scalar(T) * decay)
        xs_new, hs_new = [], []
        for X, G, H in zip(tensors[:n], tensors[n:2 * n], tensors[2 * n:]):
            g = norm * X + G
            h_new = H + g * g
            xs_new.append((X - r * g / (xp.sqrt(h_new) + eps)).astype(X.dtype, copy=False))
            hs_new.append(h_new.astype(H.dtype, copy=False))
        return tuple(xs_new + hs_new)

    return run


@kernel("Adam", domain=_TRAINING, since=1)
def adam(info):
    alpha = float(info.attrs.get("alpha", 0.9))
    beta = float(info.attrs.get("beta", 0.999))
    eps = float(info.attrs.get("epsilon", 1e-6))
    norm = float(info.attrs.get("norm_coefficient", 0.0))
    norm_post = float(info.attrs.get("norm_coefficient_post", 0.0))
    xp = info.xp

    def run(R, T, *tensors):
        n = len(tensors) // 4
        r, t = _scalar(R), _scalar(T)
        r_adj = r * np.sqrt(1 - beta ** t) / (1 - alpha ** t) if t > 0 else r
        xs, vs, hs = [], [], []
        for X, G, V, H in zip(tensors[:n], tensors[n:2 * n], tensors[2 * n:3 * n], tensors[3 * n:]):
            g = norm * X + G
            v_new = alpha * V + (1 - alpha) * g
            h_new = beta * H + (1 - beta) * g * g
            x_new = (1 - norm_post) * (X - r_adj * v_new / (xp.sqrt(h_new) + eps))
            xs.append(x_new.astype(X.dtype, copy=False))
            vs.append(v_new.astype(V.dtype, copy=False))
            hs.append(h_new.astype(H.dtype, copy=False))
        return tuple(xs + vs + hs)

    return run


@kernel("Momentum", domain=_TRAINING, since=1)
def momentum(info):
    alpha = float(info.attrs["alpha"])
    beta = float(info.attrs["beta"])
    norm = float(info.attrs["norm_coefficient"])
    nesterov = info.attrs.get("mode", "standard") == "nesterov"

    def run(R, T, *tensors):
        n = len(tensors) // 3
        r = _scalar(R)
        b = beta if _scalar(T) > 0 else 1.0
        xs, vs = [], []
        for X, G, V in zip(tensors[:n], tensors[n:2 * n], tensors[2 * n:]):
            g = norm * X + G
            v_new = alpha * V + b * g
            x_new = X - r * (g + alpha * v_new) if nesterov else X - r * v_new
            xs.append(x_new.astype(X.dtype, copy=False))
            vs.append(v_new.astype(V.dtype, copy=False))
        return tuple(xs + vs)

    return run
