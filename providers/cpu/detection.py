"""Object-detection post-processing: NonMaxSuppression (greedy, on the host: sequential by nature, small
inputs). The region poolings (MaxRoiPool, RoiAlign) are in ``pool``."""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu.registry import kernel


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
