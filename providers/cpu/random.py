"""Random generators: RandomNormal, RandomUniform, RandomNormalLike, RandomUniformLike, Bernoulli, Multinomial,
and Dropout (its training-mode mask).

As in onnxruntime, each node owns one generator created with the node (seeded by the ``seed``
attribute when given, else from fresh entropy), so a seeded session reproduces the same sequence
of results run after run, and successive runs still draw new numbers. Numbers are drawn on the
host with NumPy's ``Generator`` (cheap next to any real model) and handed to ``xp``.

The ONNX node tests of these ops compare against one particular draw of NumPy's legacy global
generator; the spec itself says results may differ between implementations even with a seed.
"""
from __future__ import annotations

import threading

import numpy as np

from engineroom.plugin_sdk import np_dtype
from engineroom.plugin_sdk.seeding import node_seed
from engineroom.providers.cpu.matmul import _fdt
from engineroom.providers.cpu.registry import kernel


class _NodeRng:
    """One node's generator; a lock keeps concurrent ``run`` calls from sharing state unsafely."""

    def __init__(self, seed):
        if seed is None:
            self.rng = np.random.default_rng(node_seed())   # set_seed's sequence, else fresh entropy
        else:
            # The seed is a float attribute; its bit pattern keeps e.g. 1.5 and 1.0 distinct.
            self.rng = np.random.default_rng(int(np.float64(seed).view(np.uint64)))
        self.lock = threading.Lock()

    def uniform(self, shape, low=0.0, high=1.0):
        with self.lock:
            return self.rng.uniform(low, high, size=shape)

    def normal(self, shape, mean=0.0, scale=1.0):
        with self.lock:
            return self.rng.normal(mean, scale, size=shape)


def _out_dtype(info, default):
    dt = info.attrs.get("dtype")
    return np_dtype(int(dt)) if dt is not None else default


def _like_dtype(info):
    if info.attrs.get("dtype") is not None:
        return np_dtype(int(info.attrs["dtype"]))
    if info.input_dtypes and info.input_dtypes[0] is not None:
        return np.dtype(info.input_dtypes[0])
    return None  # decided from the input at run time


@kernel("RandomNormal", since=1)
def random_normal(info):
    xp = info.xp
    rng = _NodeRng(info.attrs.get("seed"))
    shape = tuple(int(d) for d in info.attrs["shape"])
    dtype = _out_dtype(info, np.dtype(np.float32))
    mean, scale = float(info.attrs.get("mean", 0.0)), float(info.attrs.get("scale", 1.0))

    def run():
        return (xp.asarray(rng.normal(shape, mean, scale).astype(dtype)),)

    return run


@kernel("RandomUniform", since=1)
def random_uniform(info):
    xp = info.xp
    rng = _NodeRng(info.attrs.get("seed"))
    shape = tuple(int(d) for d in info.attrs["shape"])
    dtype = _out_dtype(info, np.dtype(np.float32))
    low, high = float(info.attrs.get("low", 0.0)), float(info.attrs.get("high", 1.0))

    def run():
        return (xp.asarray(rng.uniform(shape, low, high).astype(dtype)),)

    return run


@kernel("RandomNormalLike", since=1)
def random_normal_like(info):
    xp = info.xp
    rng = _NodeRng(info.attrs.get("seed"))
    dtype = _like_dtype(info)
    mean, scale = float(info.attrs.get("mean", 0.0)), float(info.attrs.get("scale", 1.0))

    def run(x):
        return (xp.asarray(rng.normal(x.shape, mean, scale).astype(dtype or x.dtype)),)

    return run


@kernel("RandomUniformLike", since=1)
def random_uniform_like(info):
    xp = info.xp
    rng = _NodeRng(info.attrs.get("seed"))
    dtype = _like_dtype(info)
    low, high = float(info.attrs.get("low", 0.0)), float(info.attrs.get("high", 1.0))

    def run(x):
        return (xp.asarray(rng.uniform(x.shape, low, high).astype(dtype or x.dtype)),)

    return run


@kernel("Bernoulli", since=15)
def bernoulli(info):
    xp = info.xp
    rng = _NodeRng(info.attrs.get("seed"))
    dtype = _like_dtype(info)

    def run(x):
        u = xp.asarray(rng.uniform(x.shape))
        return ((u < x).astype(dtype or x.dtype),)

    return run


@kernel("Multinomial", since=7)
def multinomial(info):
    xp = info.xp
    rng = _NodeRng(info.attrs.get("seed"))
    n = int(info.attrs.get("sample_size", 1))
    dtype = _out_dtype(info, np.dtype(np.int32))

    def run(x):
        # Rows are unnormalized log-probabilities: softmax, then invert each row's CDF.
        logits = np.asarray(x, dtype=np.float64)
        batch, classes = logits.shape
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]
        # Offset row r's CDF by r so one searchsorted over the flattened CDFs serves every row.
        rows = np.arange(batch, dtype=np.float64)[:, None]
        u = rng.uniform((batch, n)) + rows
        idx = np.searchsorted((cdf + rows).ravel(), u.ravel(), side="right").reshape(batch, n)
        idx -= np.arange(batch)[:, None] * classes
        return (xp.asarray(np.clip(idx, 0, classes - 1).astype(dtype)),)

    return run


@kernel("Dropout", since=1)
def dropout_old(info):
    """Dropout before opset 12: ratio is an attribute; in inference (the engine's case) an identity.

    The mask is of the input's type before opset 10 and boolean from 10 on.
    """
    xp = info.xp
    bool_mask = info.opset >= 10

    def run(x):
        return x, xp.ones(x.shape, dtype=bool if bool_mask else x.dtype)

    return run


@kernel("Dropout", since=12, host_inputs=(1, 2))
def dropout(info):
    """Identity unless training_mode is true; then the mask keeps each element with probability 1 - ratio.

    With a ``seed`` attribute the mask is reproducible: every run draws from NumPy's legacy generator
    seeded with it (the same stream ``np.random.seed(seed); np.random.uniform`` gives).
    """
    xp = info.xp
    seed = info.attrs.get("seed")
    rng = np.random.default_rng() if seed is None else None

    def run(x, ratio=None, training_mode=None):
        training = training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0])
        r = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        if not training or r == 0.0:
            return x, xp.ones(x.shape, dtype=bool)
        u = np.random.RandomState(int(seed)).uniform(0.0, 1.0, x.shape) if seed is not None else \
            rng.uniform(0.0, 1.0, x.shape)
        mask = xp.asarray(u >= r)
        scale = 1.0 / (1.0 - r)
        cdt = _fdt(x.dtype)
        y = (x.astype(cdt) * mask * cdt.type(scale)).astype(x.dtype)
        return y, mask

    return run
