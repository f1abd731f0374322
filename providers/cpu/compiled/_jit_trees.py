"""Compiled (numba) walk of the ai.onnx.ml tree ensembles (``ml.py``): one loop per (sample, tree).

The NumPy walk advances every (sample, tree) pair one level per pass, a dozen whole-array operations
per level, which costs ~1 ms on a 30-tree forest over 256 rows; onnxruntime walks each tree in a loop
(0.3 ms). Here each pair walks its tree to the leaf in a tight loop and the leaf's votes are summed
into the sample's row at once, in the input's precision and the trees' order, as onnxruntime sums them
(a float64 sum would break the ties of a forest's averaged votes differently).

Nodes are laid out flat (``ml._Forest``): a child or root ``>= 0`` is an interior node, ``~leaf``
a leaf. ``mode`` is onnxruntime's comparison (0 <=, 1 <, 2 >=, 3 >, 4 ==, 5 !=; set membership stays
on the NumPy path); a NaN feature goes to the true branch where ``miss`` says so, else where the
comparison with NaN sends it (false, but for !=).
"""
from __future__ import annotations

import numpy as np
from numba import njit

AOT = {
    "forest_leaves": ("A2 A1 I1 I1 I1 I1 I1 I1 I2", ("f4", "f8")),
    "forest_walk": ("A2 A1 I1 I1 I1 I1 i I2", ("f4", "f8")),
    "leaf_sums": ("I2 I1 I1 A1 A2 A2", ("f4", "f8")),
}


@njit(nogil=True, boundscheck=False, inline="always")
def _compare(m, v, th):  # pragma: no cover (compiled)
    """Whether feature value ``v`` takes the true branch of a node comparing by ``m`` with ``th``."""
    if m == 0:
        return v <= th
    if m == 1:
        return v < th
    if m == 2:
        return v >= th
    if m == 3:
        return v > th
    if m == 4:
        return v == th
    return v != th


@njit(nogil=True, boundscheck=False)
def forest_leaves(x, thr, feat, mode, tc, fc, miss, roots, out):  # pragma: no cover (compiled)
    """out[n, t] = the leaf that sample n reaches in tree t."""
    for n in range(x.shape[0]):
        for t in range(roots.shape[0]):
            node = roots[t]
            while node >= 0:
                v = x[n, feat[node]]
                cond = _compare(mode[node], v, thr[node])
                if miss[node] != 0 and v != v:
                    cond = True
                node = tc[node] if cond else fc[node]
            out[n, t] = ~node


@njit(nogil=True, boundscheck=False)
def leaf_sums(leaves, ptr, target, weight, out, hits):  # pragma: no cover (compiled)
    """out[n, k] += every vote for target k of the leaves sample n reached; hits[n, k] = 1 where one did."""
    for n in range(leaves.shape[0]):
        for t in range(leaves.shape[1]):
            leaf = leaves[n, t]
            for e in range(ptr[leaf], ptr[leaf + 1]):
                k = target[e]
                out[n, k] += weight[e]
                hits[n, k] = 1.0


@njit(nogil=True, boundscheck=False)
def forest_walk(x, thr, feat, kids, roots, depth, mode, out):  # pragma: no cover (compiled)
    """``forest_leaves`` for a forest whose interior nodes all compare alike (``mode``) and track no
    missing values, in a layout without branches: leaves are nodes too (after the interior ones), whose
    two children are themselves, node k's children are kids[2k] (true) and kids[2k + 1] (false), and
    every walk of tree t takes exactly depth[t] steps. Blocks of 64 samples walk each tree in lockstep,
    independent walks the CPU overlaps (a walk alone waits on each level's loads and mispredicted
    branches). out[n, t] = the node (a leaf) sample n reaches in tree t."""
    n_samples = x.shape[0]
    cur = np.empty(64, np.int64)
    for n0 in range(0, n_samples, 64):
        nb = min(64, n_samples - n0)
        for t in range(roots.shape[0]):
            r = roots[t]
            for b in range(nb):
                cur[b] = r
            for _ in range(depth[t]):
                for b in range(nb):
                    node = cur[b]
                    c = _compare(mode, x[n0 + b, feat[node]], thr[node])
                    cur[b] = kids[2 * node + 1 - np.int64(c)]
            for b in range(nb):
                out[n0 + b, t] = cur[b]
