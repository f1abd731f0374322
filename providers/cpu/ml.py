"""Classic ML ops of the ``ai.onnx.ml`` domain: ArrayFeatureExtractor, Binarizer, CategoryMapper,
FeatureVectorizer, Imputer, LabelEncoder (1, 2, 4), LinearClassifier, LinearRegressor, Normalizer,
OneHotEncoder, Scaler, TreeEnsemble (5), TreeEnsembleClassifier / TreeEnsembleRegressor (1, 3), ZipMap
(a sequence of Python dicts, as onnxruntime returns it), DictVectorizer and CastMap (a dict in).

Trees: every tree format is converted once, in the factory, to one flat layout (interior nodes with
feature, threshold, comparison and two children; leaves as CSR lists of (target, weight)). With the
``jit`` extra a compiled loop walks each (sample, tree) to its leaf and sums the votes (``_jit_trees``);
the NumPy path walks all samples down all trees together, one tree level per vectorized step, so the
Python loop runs depth times, never per sample or per tree.

These ops are host-side by nature (string labels, small models), so they compute with NumPy.
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.host_values import host_array as _host
from engineroom.providers.cpu.array_module import NUMPY
from engineroom.providers.cpu.registry import kernel

ML = "ai.onnx.ml"


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


def _obj_array(values, shape) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


def _attr(info, *names):
    """First present attribute among ``names`` (tensor or list), as a NumPy array; None if none is set."""
    for n in names:
        v = info.attrs.get(n)
        if v is not None:
            return np.asarray(v)
    return None


# ---------------------------------------------------------------------------------------------------
# Post transforms shared by the linear and tree models


def _softmax(s):
    e = s - np.maximum.reduce(s, 1, keepdims=True)
    np.exp(e, out=e)
    e /= np.add.reduce(e, 1, keepdims=True)
    return e


def _softmax_zero(s):
    # Like softmax, but entries that are exactly 0 stay 0 (they mean "no score").
    m = np.where(s != 0, s, -np.inf).max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.where(s != 0, np.exp(s - m), 0)
    d = e.sum(axis=1, keepdims=True)
    return np.divide(e, d, out=np.zeros_like(e), where=d != 0)


def _logistic(s):
    # SciPy's expit, imported lazily (~0.1 s and ~18 MB of RSS that most sessions never need): one ufunc
    # call; the NumPy forms (tanh, or exp and a reciprocal) take four, ~10 us more a run of logreg_iris
    import scipy.special

    return scipy.special.expit(s)


def _probit(s):
    import scipy.special

    return np.sqrt(2) * scipy.special.erfinv(2 * s - 1)


_POST = {"NONE": None, "SOFTMAX": _softmax, "LOGISTIC": _logistic, "SOFTMAX_ZERO": _softmax_zero,
         "PROBIT": _probit}
_POST_BY_INT = ["NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT"]


def _post(name):
    if isinstance(name, (int, np.integer)):
        name = _POST_BY_INT[int(name)]
    return _POST[name]


def _resolved(post):
    """``post`` as the function to call per run: LOGISTIC is SciPy's ``expit`` itself (imported once, here)."""
    if post is _logistic:
        import scipy.special

        return scipy.special.expit
    return post


# ---------------------------------------------------------------------------------------------------
# Simple feature ops


@kernel("ArrayFeatureExtractor", domain=ML, since=1, host_inputs=(1,))
def array_feature_extractor(x, indices, *, xp):
    idx = np.asarray(_host(indices), dtype=np.int64).reshape(-1)
    out = x[..., idx]
    # A 1-D input gives [1, k], as onnxruntime does.
    return out.reshape(1, -1) if x.ndim == 1 else out


@kernel("Binarizer", domain=ML, since=1)
def binarizer(x, *, xp, threshold=0.0):
    return xp.where(x > threshold, 1, 0).astype(x.dtype)


@kernel("Normalizer", domain=ML, since=1)
def normalizer(info):
    norm = _text(info.attrs.get("norm", "MAX"))
    # fmax: the max norm passes over NaNs, as onnxruntime's comparisons do
    add, maximum, absolute, sqrt, divide, count_nonzero = (np.add.reduce, np.fmax.reduce, np.abs, np.sqrt,
                                                           np.divide, np.count_nonzero)
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    jit = NUMPY.compiled("ml")      # one pass over the rows (_jit_ml.normalize_rows)
    mode = {"MAX": 0, "L1": 1}.get(norm, 2)
    empty, contiguous = np.empty, np.ascontiguousarray

    def run(x):
        # float32/float64 read as they are (float64 stays float64 until the end), other types as float32;
        # divided into a new array where no norm is 0 (one pass, no copy first), else a copy divided in
        # place where the norm is not 0: rows whose norm is 0 stay as they are
        rows = x if x.dtype == f32 or x.dtype == f64 else x.astype(f32)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        if jit is not None and rows.__class__ is np.ndarray:
            y = empty(rows.shape, rows.dtype)
            jit.normalize_rows(contiguous(rows), y, mode)
            y = y if y.shape == x.shape else y.reshape(x.shape)
            return (y if y.dtype == f32 else y.astype(f32),)
        if norm == "MAX":
            d = maximum(rows, 1, keepdims=True)
        elif norm == "L1":
            d = add(absolute(rows), 1, keepdims=True)
        else:  # L2
            d = sqrt(add(rows * rows, 1, keepdims=True))
        if count_nonzero(d) == d.size:
            rows = divide(rows, d)
        else:
            rows = rows.copy()
            divide(rows, d, out=rows, where=d != 0)
        y = rows if rows.shape == x.shape else rows.reshape(x.shape)
        return (y if y.dtype == f32 else y.astype(f32),)

    return run


@kernel("Scaler", domain=ML, since=1)
def scaler(info):
    xp = info.xp
    offset = _attr(info, "offset")
    scale = _attr(info, "scale")
    offset = np.zeros(1, np.float32) if offset is None else offset.astype(np.float32)
    scale = np.ones(1, np.float32) if scale is None else scale.astype(np.float32)

    def run(x):
        return (((x.astype(np.float32) - xp.asarray(offset)) * xp.asarray(scale)).astype(np.float32),)

    return run


@kernel("Imputer", domain=ML, since=1)
def imputer(info):
    xp = info.xp
    floats = _attr(info, "imputed_value_floats")
    ints = _attr(info, "imputed_value_int64s")
    rep_f = float(info.attrs.get("replaced_value_float", 0.0))
    rep_i = int(info.attrs.get("replaced_value_int64", 0))

    def run(x):
        if x.dtype.kind == "f":
            imp = floats if floats is not None else ints
            missing = xp.isnan(x) if np.isnan(rep_f) else x == rep_f
        else:
            imp = ints if ints is not None else floats
            missing = x == rep_i
        vals = xp.asarray(np.asarray(imp).astype(x.dtype))
        if vals.size == 1:
            vals = vals.reshape(())
        return (xp.where(missing, vals, x).astype(x.dtype, copy=False),)

    return run


@kernel("OneHotEncoder", domain=ML, since=1)
def one_hot_encoder(info):
    cats_s = info.attrs.get("cats_strings")
    cats_i = info.attrs.get("cats_int64s")
    zeros = int(info.attrs.get("zeros", 1))
    if cats_s is not None:
        table = {_text(c): i for i, c in enumerate(cats_s)}
        n = len(cats_s)
    else:
        table = {int(c): i for i, c in enumerate(cats_i)}
        n = len(cats_i)

    def run(x):
        xh = _host(x)
        if xh.dtype == object:
            pos = np.array([table.get(_text(v), -1) for v in xh.reshape(-1)], dtype=np.int64)
        else:
            pos = np.array([table.get(int(v), -1) for v in xh.astype(np.int64).reshape(-1)], dtype=np.int64)
        if not zeros and (pos < 0).any():
            raise ValueError("OneHotEncoder: input holds a category not in the list and zeros=0")
        out = np.zeros((pos.size, n), dtype=np.float32)
        hit = pos >= 0
        out[np.nonzero(hit)[0], pos[hit]] = 1
        return (info.xp.asarray(out.reshape(xh.shape + (n,))),)

    return run


@kernel("FeatureVectorizer", domain=ML, since=1)
def feature_vectorizer(info):
    dims = [int(d) for d in (info.attrs.get("inputdimensions") or [])]
    xp = info.xp

    def run(*xs):
        parts = []
        for i, x in enumerate(xs):
            rows = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
            rows = rows.astype(np.float32)
            d = dims[i] if i < len(dims) else rows.shape[1]
            # Each input fills exactly its declared width: cut what is longer, pad what is shorter with 0.
            if rows.shape[1] > d:
                rows = rows[:, :d]
            elif rows.shape[1] < d:
                rows = xp.concatenate([rows, xp.zeros((rows.shape[0], d - rows.shape[1]), np.float32)], axis=1)
            parts.append(rows)
        return (xp.concatenate(parts, axis=1),)

    return run


# ---------------------------------------------------------------------------------------------------
# CategoryMapper / LabelEncoder


@kernel("CategoryMapper", domain=ML, since=1)
def category_mapper(info):
    cats_s = [_text(s) for s in info.attrs.get("cats_strings") or []]
    cats_i = [int(v) for v in info.attrs.get("cats_int64s") or []]
    s2i = dict(zip(cats_s, cats_i))
    i2s = dict(zip(cats_i, cats_s))
    d_int = int(info.attrs.get("default_int64", -1))
    d_str = _text(info.attrs.get("default_string", "_Unused"))

    def run(x):
        xh = _host(x)
        if xh.dtype == object:
            return (np.array([s2i.get(_text(v), d_int) for v in xh.reshape(-1)], dtype=np.int64).reshape(xh.shape),)
        return (_obj_array([i2s.get(int(v), d_str) for v in xh.reshape(-1)], xh.shape),)

    return run


def _label_table(info):
    """(keys, values, default, out_dtype) for LabelEncoder 2/4 from whichever keys_*/values_* are set."""
    a = info.attrs
    if a.get("keys_tensor") is not None:
        keys = np.asarray(a["keys_tensor"])
    elif a.get("keys_strings") is not None:
        keys = np.asarray([_text(s) for s in a["keys_strings"]], dtype=object)
    elif a.get("keys_int64s") is not None:
        keys = np.asarray(a["keys_int64s"], dtype=np.int64)
    else:
        keys = np.asarray(a.get("keys_floats") or [], dtype=np.float32)
    if a.get("values_tensor") is not None:
        values = np.asarray(a["values_tensor"])
    elif a.get("values_strings") is not None:
        values = np.asarray([_text(s) for s in a["values_strings"]], dtype=object)
    elif a.get("values_int64s") is not None:
        values = np.asarray(a["values_int64s"], dtype=np.int64)
    else:
        values = np.asarray(a.get("values_floats") or [], dtype=np.float32)
    # String tensors may hold bytes (as TensorProto stores them): compare and return str.
    if keys.dtype.kind in "USO":
        keys = np.asarray([_text(k) for k in keys.reshape(-1)], dtype=object)
    if values.dtype.kind in "USO":
        values = np.asarray([_text(v) for v in values.reshape(-1)], dtype=object)
    out_dtype = values.dtype
    if a.get("default_tensor") is not None:
        default = np.asarray(a["default_tensor"]).reshape(-1)[0]
        default = _text(default) if out_dtype.kind == "O" else default
    elif out_dtype.kind == "O":
        default = _text(a.get("default_string", "_Unused"))
    elif out_dtype.kind in "iu":
        default = int(a.get("default_int64", -1))
    else:
        default = float(a.get("default_float", -0.0))
    return keys, values, default, out_dtype


@kernel("LabelEncoder", domain=ML, since=1)
def label_encoder_1(info):
    classes = [_text(s) for s in info.attrs.get("classes_strings") or []]
    index = {s: i for i, s in enumerate(classes)}
    d_int = int(info.attrs.get("default_int64", -1))
    d_str = _text(info.attrs.get("default_string", "_Unused"))

    def run(x):
        xh = _host(x)
        if xh.dtype == object:
            get = index.get
            return (np.array([get(v, d_int) if v.__class__ is str else get(_text(v), d_int)
                              for v in xh.reshape(-1).tolist()], dtype=np.int64).reshape(xh.shape),)
        flat = [classes[int(v)] if 0 <= int(v) < len(classes) else d_str for v in xh.reshape(-1)]
        return (_obj_array(flat, xh.shape),)

    return run


@kernel("LabelEncoder", domain=ML, since=2)
def label_encoder(info):
    keys, values, default, out_dtype = _label_table(info)
    xp = info.xp
    if keys.dtype == object:
        table = dict(zip(keys.tolist(), values.tolist()))
        sorted_keys = order = None
    else:
        # Numeric keys: one sorted copy, looked up with searchsorted. NaN keys match NaN inputs.
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        # (Since version 4 only: earlier versions compare by value, and NaN never equals NaN.)
        nan_pos = np.nonzero(np.isnan(keys))[0] if keys.dtype.kind == "f" and info.opset >= 4 else \
            np.array([], np.int64)
        nan_value = values[nan_pos[0]] if nan_pos.size else None

    def run(x):
        xh = _host(x)
        if sorted_keys is None:
            # the items as a list, str keys looked up as they are (no call per item)
            get = table.get
            flat = [get(v, default) if v.__class__ is str else get(_text(v), default)
                    for v in xh.reshape(-1).tolist()]
            if out_dtype.kind == "O":
                return (_obj_array(flat, xh.shape),)
            return (xp.asarray(np.asarray(flat, dtype=out_dtype).reshape(xh.shape)),)
        flat = xh.reshape(-1).astype(sorted_keys.dtype, copy=False) if xh.dtype != object else xh.reshape(-1)
        pos = np.searchsorted(sorted_keys, flat) if sorted_keys.size else np.zeros(flat.shape, np.int64)
        pos = np.minimum(pos, max(sorted_keys.size - 1, 0))
        found = (sorted_keys[pos] == flat) if sorted_keys.size else np.zeros(flat.shape, bool)
        if out_dtype.kind == "O":
            out = np.empty(flat.shape, dtype=object)
            out[:] = default
        else:
            out = np.full(flat.shape, default, dtype=out_dtype)
        if sorted_keys.size:
            out[found] = values[order[pos[found]]]
        if nan_value is not None:
            out[np.isnan(flat)] = nan_value
        out = out.reshape(xh.shape)
        return (out if out_dtype.kind == "O" else xp.asarray(out),)

    return run


# ---------------------------------------------------------------------------------------------------
# Linear models


def _linear_scores(info):
    coef = np.asarray(info.attrs["coefficients"], dtype=np.float32)
    intercepts = _attr(info, "intercepts")
    return coef, None if intercepts is None else intercepts.astype(np.float32)


@kernel("LinearRegressor", domain=ML, since=1)
def linear_regressor(info):
    coef, inter = _linear_scores(info)
    targets = int(info.attrs.get("targets", 1))
    w = coef.reshape(targets, -1).T.copy()
    post = _post(info.attrs.get("post_transform", "NONE"))

    def run(x):
        xh = _host(x)
        rows = xh.reshape(1, -1) if xh.ndim == 1 else xh
        s = rows.astype(np.float32) @ w
        if inter is not None:
            s = s + inter
        if post is not None:
            s = post(s)
        return (info.xp.asarray(s.astype(np.float32)),)

    return run


def _labels(info, ints_name: str, strs_name: str):
    if info.attrs.get(strs_name) is not None:
        return np.asarray([_text(s) for s in info.attrs[strs_name]], dtype=object)
    return np.asarray(info.attrs.get(ints_name) or [], dtype=np.int64)


@kernel("LinearClassifier", domain=ML, since=1)
def linear_classifier(info):
    coef, inter = _linear_scores(info)
    labels = _labels(info, "classlabels_ints", "classlabels_strings")
    n_classes = labels.size
    # labels 0, 1, ... n-1 (scikit-learn's usual): the label is argmax's int64 index itself, no gather
    by_position = n_classes > 0 and labels.dtype == np.int64 and np.dtype(np.intp) == np.int64 and \
        bool((labels == np.arange(n_classes)).all())
    post_name = info.attrs.get("post_transform", "NONE")
    post = _resolved(_post(post_name))
    weights = {}   # input width -> the [width, n_rows] weight view

    def weights_for(width: int):
        # onnxruntime reads the coefficients as [len(intercepts), the input's width]: a model whose
        # declared input is narrower than its coefficients (onnxruntime's own sample logreg_iris.onnx
        # declares [3, 2] against 4 features) is weighed by the flat list's leading part, as there.
        n_rows = inter.size if inter is not None else coef.size // max(width, 1)
        if coef.size < n_rows * width:
            raise ValueError(f"LinearClassifier: {coef.size} coefficients cannot weigh {width} features "
                             f"for {n_rows} classes")
        w = weights[width] = coef[:n_rows * width].reshape(n_rows, -1).T
        return w

    f32 = np.dtype(np.float32)
    dot, stack, empty = np.dot, np.stack, np.empty
    # the softmax as one compiled pass per row (_jit_transformer.softmax, float32) instead of four NumPy
    # calls: ~0.7 against ~2.5 us on 5 x 3 scores
    jit = NUMPY.compiled("transformer") if post is _softmax else None
    softmax_rows = jit.softmax if jit is not None else None
    shape = info.input_shapes[0] if info.input_shapes else None
    if shape is not None and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
        weights_for(shape[1])   # checked and prepared at creation where the width is static

    def run(x):
        rows = _host(x)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        if rows.dtype != f32:
            rows = rows.astype(f32)
        w = weights.get(rows.shape[1])
        s = dot(rows, w if w is not None else weights_for(rows.shape[1]))
        if inter is not None:
            s += inter
        if s.shape[1] == 1 and n_classes == 2:
            # One score column for two classes: it is the positive class's score, the negative
            # class gets its complement (onnxruntime's convention; only LOGISTIC/PROBIT transform it).
            raw = s[:, 0]
            p = post(raw) if post_name in ("LOGISTIC", "PROBIT") else raw
            scores = stack([1 - p, p], axis=1)
            label = np.where(raw > 0, labels[1], labels[0]).astype(labels.dtype)
        else:
            label = s.argmax(1) if by_position else labels.take(s.argmax(1)) if n_classes else \
                s.argmax(1).astype(labels.dtype)
            if softmax_rows is not None and s.dtype == f32 and s.shape[1]:
                scores = empty(s.shape, f32)
                softmax_rows(s, scores)
            else:
                scores = post(s) if post is not None else s
        return label, scores if scores.dtype == f32 else scores.astype(f32)

    return run


# ---------------------------------------------------------------------------------------------------
# Trees


_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5,
          "BRANCH_MEMBER": 6, "LEAF": -1}


class _Forest:
    """Flat forest. Children and roots are encoded ``>= 0`` for an interior node, ``~leaf`` for a leaf."""

    def __init__(self, feat, thr, mode, true_c, false_c, missing_true, roots, leaf_ptr, leaf_target, leaf_weight,
                 members=None):
        self.feat = np.asarray(feat, np.int64)
        self.thr = np.asarray(thr, np.float64)
        self.mode = np.asarray(mode, np.int64)
        self.true_c = np.asarray(true_c, np.int64)
        self.false_c = np.asarray(false_c, np.int64)
        self.missing_true = np.asarray(missing_true, bool)
        self.roots = np.asarray(roots, np.int64)
        self.leaf_ptr = np.asarray(leaf_ptr, np.int64)
        self.leaf_target = np.asarray(leaf_target, np.int64)
        self.leaf_weight = np.asarray(leaf_weight, np.float64)
        self.single_mode = int(self.mode[0]) if self.mode.size and (self.mode == self.mode[0]).all() else None
        # Set membership: (node, value) pairs as sortable keys over the distinct member values.
        self.member_values = None
        if members:
            vals = np.unique(np.concatenate([v for _, v in members]))
            keys = np.concatenate([node * vals.size + np.searchsorted(vals, v) for node, v in members])
            self.member_values, self.member_keys = vals, np.sort(keys)
        self._thr = {np.dtype(np.float64): self.thr, np.dtype(np.float32): self.thr.astype(np.float32)}
        self.jit = NUMPY.compiled("trees") if self._walkable() else None
        if self.jit is not None:
            self.j_mode = np.ascontiguousarray(self.mode)
            self.j_miss = np.ascontiguousarray(self.missing_true.astype(np.int64))
            self.j_feat, self.j_tc, self.j_fc, self.j_roots = (
                np.ascontiguousarray(a) for a in (self.feat, self.true_c, self.false_c, self.roots))
            self.n_feat = int(self.feat.max()) + 1 if self.feat.size else 0
            self.j_ptr, self.j_target = np.ascontiguousarray(self.leaf_ptr), np.ascontiguousarray(self.leaf_target)
            self.j_weight = {np.dtype(np.float64): np.ascontiguousarray(self.leaf_weight),
                             np.dtype(np.float32): self.leaf_weight.astype(np.float32)}
            self.max_target = int(self.leaf_target.max()) if self.leaf_target.size else -1
        self.walk = self._walk_layout() if self.jit is not None and self.single_mode is not None \
            and 0 <= self.single_mode <= 5 and not self.missing_true.any() and self.roots.size else None

    def _walk_layout(self):
        """The arrays of the compiled lockstep walk (``_jit_trees.forest_walk``): leaves become nodes
        ``n_int + leaf`` whose children are themselves, children interleaved (true, false), and each
        tree's depth (its longest path), so every walk takes the same number of steps."""
        n_int, n_leaf = self.mode.size, self.leaf_ptr.size - 1
        leaf_ids = np.arange(n_int, n_int + n_leaf, dtype=np.int64)

        def ext(c):
            return np.where(c >= 0, c, n_int + ~c)

        kids = np.empty(2 * (n_int + n_leaf), np.int64)
        kids[0:2 * n_int:2], kids[1:2 * n_int:2] = ext(self.true_c), ext(self.false_c)
        kids[2 * n_int::2] = kids[2 * n_int + 1::2] = leaf_ids
        roots = ext(self.roots)
        depth = np.zeros(roots.size, np.int64)
        tree, node = np.arange(roots.size), roots
        for level in range(1, n_int + 2):     # the walkable check rules out loops: this ends
            inner = node < n_int
            if not inner.any():
                break
            tree, node = np.repeat(tree[inner], 2), np.stack([kids[2 * node[inner]], kids[2 * node[inner] + 1]],
                                                            axis=1).reshape(-1)
            depth[np.unique(tree)] = level
        feat = np.concatenate([self.feat, np.zeros(n_leaf, np.int64)])
        thr = {dt: np.concatenate([t, np.zeros(n_leaf, dt)]) for dt, t in self._thr.items()}
        return kids, feat, thr, roots, depth, n_int

    def _walkable(self) -> bool:
        """Whether the compiled walk may run: comparisons only, every index in range, every interior
        node reached from one place at most (so no walk loops); the compiled code trusts all of that."""
        n_int, n_leaf = self.mode.size, self.leaf_ptr.size - 1
        if (self.mode < 0).any() or (self.mode > 5).any() or (self.feat < 0).any():
            return False
        if self.feat.size != n_int or self.thr.size != n_int or self.missing_true.size != n_int:
            return False
        if self.true_c.size != n_int or self.false_c.size != n_int or n_leaf < 0:
            return False
        kids = np.concatenate([self.true_c, self.false_c, self.roots])
        if kids.size and ((kids >= n_int).any() or (kids < -n_leaf).any()):
            return False
        if self.leaf_target.size and (self.leaf_target < 0).any():
            return False
        if self.leaf_ptr.size and (self.leaf_ptr[0] != 0 or (np.diff(self.leaf_ptr) < 0).any()
                                   or self.leaf_ptr[-1] > min(self.leaf_target.size, self.leaf_weight.size)):
            return False
        interior = kids[kids >= 0]
        return np.unique(interior).size == interior.size

    def thresholds(self, dtype):
        """Thresholds in the comparison dtype (float32 inputs compare against float32 thresholds)."""
        return self._thr.get(np.dtype(dtype)) if np.dtype(dtype) in self._thr else self.thr.astype(dtype)

    def leaves(self, x, calc):
        """Leaf index reached by every (sample, tree): shape (N, T)."""
        n = x.shape[0]
        if self.jit is not None and x.ndim == 2 and x.shape[1] >= self.n_feat:
            x = np.ascontiguousarray(x, dtype=calc)
            out = np.empty((n, self.roots.size), np.int64)
            if self.walk is not None:
                kids, feat, thr, roots, depth, n_int = self.walk
                self.jit.forest_walk(x, thr[np.dtype(calc)], feat, kids, roots, depth, self.single_mode, out)
                out -= n_int
                return out
            self.jit.forest_leaves(x, self._thr[np.dtype(calc)], self.j_feat, self.j_mode, self.j_tc, self.j_fc,
                                   self.j_miss, self.j_roots, out)
            return out
        thr = self.thresholds(calc)
        cur = np.broadcast_to(self.roots, (n, self.roots.size)).copy()
        rows = np.broadcast_to(np.arange(n)[:, None], cur.shape)
        while True:
            active = cur >= 0
            if not active.any():
                break
            r = rows[active]
            node = cur[active]
            v = x[r, self.feat[node]]
            t = thr[node]
            mode = self.single_mode
            if mode is not None and mode != 6:
                cond = _compare(mode, v, t)
            else:
                m = self.mode[node]
                cond = np.zeros(v.shape, bool)
                for k in np.unique(m):
                    sel = m == k
                    cond[sel] = self._member(node[sel], v[sel]) if k == 6 else _compare(int(k), v[sel], t[sel])
            if self.missing_true.any():
                cond |= np.isnan(v) & self.missing_true[node]
            cur[active] = np.where(cond, self.true_c[node], self.false_c[node])
        return ~cur

    def _member(self, node, v):
        vals = self.member_values
        if vals is None:
            return np.zeros(v.shape, bool)
        pos = np.minimum(np.searchsorted(vals, v), vals.size - 1)
        hit = vals[pos] == v
        keys = node * vals.size + pos
        k = np.minimum(np.searchsorted(self.member_keys, keys), self.member_keys.size - 1)
        return hit & (self.member_keys[k] == keys)

    def aggregate(self, leaves, n_targets: int, agg: str, calc=np.float64):
        """Per-sample, per-target aggregate of the reached leaves' weights: (N, n_targets), and hit mask
        (sums in ``calc``, onnxruntime's precision)."""
        n, t = leaves.shape
        if self.jit is not None and agg in ("SUM", "AVERAGE") and self.max_target < n_targets:
            calc = np.dtype(calc)
            out = np.zeros((n, n_targets), calc)
            hits = np.zeros((n, n_targets), calc)
            self.jit.leaf_sums(np.ascontiguousarray(leaves), self.j_ptr, self.j_target, self.j_weight[calc], out,
                               hits)
            if agg == "AVERAGE":
                out /= max(self.roots.size, 1)
            return out, hits > 0
        flat = leaves.reshape(-1)
        start = self.leaf_ptr[flat]
        cnt = self.leaf_ptr[flat + 1] - start
        total = int(cnt.sum())
        sample = np.repeat(np.repeat(np.arange(n), t), cnt)
        # Entry indices: each reached leaf's CSR range, concatenated.
        offs = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(start, cnt)
        target = self.leaf_target[offs]
        weight = self.leaf_weight[offs]
        key = sample * n_targets + target
        hits = np.bincount(key, minlength=n * n_targets).reshape(n, n_targets) > 0
        if agg in ("SUM", "AVERAGE"):
            if np.dtype(calc) == np.float32:     # in order and in float32, as onnxruntime (ties break alike)
                out = np.zeros(n * n_targets, np.float32)
                np.add.at(out, key, weight.astype(np.float32))
                out = out.reshape(n, n_targets)
            else:
                out = np.bincount(key, weights=weight, minlength=n * n_targets).reshape(n, n_targets)
            if agg == "AVERAGE":
                out /= max(self.roots.size, 1)
        elif agg == "MIN":
            out = np.full(n * n_targets, np.inf)
            np.minimum.at(out, key, weight)
            out = np.where(hits.reshape(-1), out, 0).reshape(n, n_targets)
        else:
            out = np.full(n * n_targets, -np.inf)
            np.maximum.at(out, key, weight)
            out = np.where(hits.reshape(-1), out, 0).reshape(n, n_targets)
        return out, hits


def _compare(mode: int, v, t):
    if mode == 0:
        return v <= t
    if mode == 1:
        return v < t
    if mode == 2:
        return v >= t
    if mode == 3:
        return v > t
    if mode == 4:
        return v == t
    return v != t


def _calc_dtype(x_dtype) -> np.dtype:
    return np.dtype(np.float64) if x_dtype == np.float64 else np.dtype(np.float32)


def _forest_from_v5(info) -> _Forest:
    a = info.attrs
    modes = np.asarray(a["nodes_modes"]).astype(np.int64).reshape(-1)
    splits = np.asarray(a.get("nodes_splits")).astype(np.float64).reshape(-1)
    tl = np.asarray(a["nodes_trueleafs"], bool)
    fl = np.asarray(a["nodes_falseleafs"], bool)
    tn = np.asarray(a["nodes_truenodeids"], np.int64)
    fn = np.asarray(a["nodes_falsenodeids"], np.int64)
    true_c = np.where(tl, ~tn, tn)
    false_c = np.where(fl, ~fn, fn)
    missing = a.get("nodes_missing_value_tracks_true")
    missing = np.zeros(modes.size, bool) if missing is None else np.asarray(missing, bool)
    roots = np.asarray(a["tree_roots"], np.int64)
    # A one-leaf tree is a node whose both branches name the same leaf: it still works as a node,
    # but a root that is itself that pattern resolves in one step anyway.
    lw = np.asarray(a["leaf_weights"]).astype(np.float64).reshape(-1)
    lt = np.asarray(a["leaf_targetids"], np.int64)
    members = []
    mv = a.get("membership_values")
    if mv is not None and (modes == 6).any():
        mv = np.asarray(mv).astype(np.float64).reshape(-1)
        groups, cur = [], []
        for v in mv:
            if np.isnan(v):
                groups.append(np.asarray(cur, np.float64))
                cur = []
            else:
                cur.append(v)
        if cur:
            groups.append(np.asarray(cur, np.float64))
        for node, g in zip(np.nonzero(modes == 6)[0], groups):
            members.append((int(node), g))
    return _Forest(a["nodes_featureids"], splits, modes, true_c, false_c, missing, roots,
                   np.arange(lw.size + 1), lt, lw, members)


@kernel("TreeEnsemble", domain=ML, since=5)
def tree_ensemble(info):
    forest = _forest_from_v5(info)
    n_targets = int(info.attrs["n_targets"])
    agg = ["AVERAGE", "SUM", "MIN", "MAX"][int(info.attrs.get("aggregate_function", 1))]
    post = _post(int(info.attrs.get("post_transform", 0)))
    xp = info.xp

    def run(x):
        xh = _host(x)
        calc = _calc_dtype(xh.dtype)
        rows = xh.reshape(xh.shape[0], -1).astype(calc, copy=False)
        out, _ = forest.aggregate(forest.leaves(rows, calc), n_targets, agg, calc)
        if post is not None:
            out = post(out)
        return (xp.asarray(out.astype(xh.dtype if xh.dtype.kind == "f" else np.float32)),)

    return run


def _forest_from_legacy(info, prefix: str):
    """Build a _Forest from the TreeEnsembleRegressor/Classifier attribute layout (nodes by (tree, id))."""
    a = info.attrs
    tree_ids = np.asarray(a["nodes_treeids"], np.int64)
    node_ids = np.asarray(a["nodes_nodeids"], np.int64)
    mode_of: dict = {}      # each spelling read once: forests have thousands of nodes (skl_rf_pipeline: 2,708)
    modes = [mode_of[m] if m in mode_of else mode_of.setdefault(m, _MODES[_text(m)]) for m in a["nodes_modes"]]
    values = _attr(info, "nodes_values_as_tensor", "nodes_values")
    values = np.zeros(len(modes)) if values is None else values.astype(np.float64).reshape(-1)
    feats = np.asarray(a.get("nodes_featureids") or [0] * len(modes), np.int64)
    tn = np.asarray(a["nodes_truenodeids"], np.int64)
    fn = np.asarray(a["nodes_falsenodeids"], np.int64)
    missing = a.get("nodes_missing_value_tracks_true")
    missing = np.zeros(len(modes), bool) if not missing else np.asarray(missing, bool)
    is_leaf = np.asarray([m == -1 for m in modes])
    interior = np.nonzero(~is_leaf)[0]
    leaf_nodes = np.nonzero(is_leaf)[0]
    # Leaf votes: (tree, node) -> list of (target/class id, weight), in CSR order.
    t_tree = np.asarray(a[f"{prefix}_treeids"], np.int64)
    t_node = np.asarray(a[f"{prefix}_nodeids"], np.int64)
    t_id = np.asarray(a[f"{prefix}_ids"], np.int64)
    t_w = _attr(info, f"{prefix}_weights_as_tensor", f"{prefix}_weights")
    t_w = t_w.astype(np.float64).reshape(-1)
    links = _links_sorted(tree_ids, node_ids, tn, fn, interior, leaf_nodes, t_tree, t_node)
    true_c, false_c, root_list, leaf_of = links if links is not None else \
        _links_by_dict(tree_ids, node_ids, tn, fn, interior, leaf_nodes, t_tree, t_node)
    ok = leaf_of >= 0
    order = np.argsort(leaf_of[ok], kind="stable")
    lo = leaf_of[ok][order]
    ptr = np.zeros(len(leaf_nodes) + 1, np.int64)
    np.add.at(ptr, lo + 1, 1)
    ptr = np.cumsum(ptr)
    f = _Forest(feats[interior], values[interior], np.asarray(modes)[interior], true_c, false_c,
                missing[interior] if missing.size == len(modes) else np.zeros(len(interior), bool),
                root_list, ptr, t_id[ok][order], t_w[ok][order])
    return f, t_id, t_w


def _links_by_dict(tree_ids, node_ids, tn, fn, interior, leaf_nodes, t_tree, t_node):
    """(true children, false children, roots, leaf of each vote) of a legacy forest, by (tree, node) look-ups;
    a child that names no node raises KeyError. Children and roots are encoded as ``_Forest`` takes them.
    Python ints throughout: NumPy scalars cost ~10x more a step."""
    tl, nl, tnl, fnl = tree_ids.tolist(), node_ids.tolist(), tn.tolist(), fn.tolist()
    key = {tn_: i for i, tn_ in enumerate(zip(tl, nl))}
    inner = interior.tolist()
    new_interior = {p: i for i, p in enumerate(inner)}
    new_leaf = {p: i for i, p in enumerate(leaf_nodes.tolist())}

    def enc(p: int) -> int:
        return new_interior[p] if p in new_interior else ~new_leaf[p]

    true_c = [enc(key[(tl[p], tnl[p])]) for p in inner]
    false_c = [enc(key[(tl[p], fnl[p])]) for p in inner]
    # Roots: per tree, the node no other node points to (lowest node id on ties), trees in id order.
    children = set()
    for p in inner:
        children.add((tl[p], tnl[p]))
        children.add((tl[p], fnl[p]))
    roots = {}
    for p, (t, n) in enumerate(zip(tl, nl)):
        if (t, n) not in children and (t not in roots or n < nl[roots[t]]):
            roots[t] = p
    root_list = [enc(roots[t]) for t in sorted(roots)]
    leaf_of = np.asarray([new_leaf.get(key.get(k, -1), -1) for k in zip(t_tree.tolist(), t_node.tolist())],
                         np.int64)
    return true_c, false_c, root_list, leaf_of


def _links_sorted(tree_ids, node_ids, tn, fn, interior, leaf_nodes, t_tree, t_node):
    """What ``_links_by_dict`` answers, by sorting instead of a Python look-up per node and vote (~3 ms of
    skl_rf_pipeline's session creation); None where it cannot say the same (a child naming no node: the
    dict path raises; ids too far apart to combine)."""
    n = tree_ids.size
    if not (node_ids.size == tn.size == fn.size == n and t_tree.size == t_node.size):
        return None         # malformed: the dict path fails (or not) as it always did
    t_in = tree_ids[interior]
    at_true = _pair_index(tree_ids, node_ids, t_in, tn[interior])
    at_false = _pair_index(tree_ids, node_ids, t_in, fn[interior])
    at_vote = _pair_index(tree_ids, node_ids, t_tree, t_node)
    is_child = _pair_index(np.concatenate([t_in, t_in]), np.concatenate([tn[interior], fn[interior]]),
                           tree_ids, node_ids)
    if at_true is None or at_false is None or at_vote is None or is_child is None \
            or (at_true < 0).any() or (at_false < 0).any():
        return None
    code = np.empty(n, np.int64)            # each node as a child or root: interior rank, or ~leaf rank
    code[interior] = np.arange(interior.size)
    code[leaf_nodes] = ~np.arange(leaf_nodes.size)
    leaf_rank = np.full(n + 1, -1, np.int64)       # the last slot answers "no such node"
    leaf_rank[leaf_nodes] = np.arange(leaf_nodes.size)
    # roots: per tree (ascending), the free node of lowest id, the first written on ties
    free = np.nonzero(is_child < 0)[0]
    free = free[np.lexsort((free, node_ids[free], tree_ids[free]))]
    first = np.ones(free.size, bool)
    first[1:] = tree_ids[free[1:]] != tree_ids[free[:-1]]
    return code[at_true], code[at_false], code[free[first]], leaf_rank[at_vote]


def _pair_index(tree_ids, node_ids, want_t, want_n):
    """For each pair (want_t[i], want_n[i]): the last index p whose (tree_ids[p], node_ids[p]) equals it,
    else -1, as a dict of the pairs answers, in one sort (a Python look-up per vote cost ~1 us: 4,000 votes
    in skl_rf_pipeline's forest); None where the pairs' ids are too far apart to combine into one int64."""
    out = np.full(want_t.size, -1, np.int64)
    if not tree_ids.size or not want_t.size:
        return out
    trees = np.unique(tree_ids)
    lo = min(int(node_ids.min()), int(want_n.min()))
    span = max(int(node_ids.max()), int(want_n.max())) - lo + 1
    if span * (trees.size + 1) >= 1 << 62:
        return None
    wr = np.searchsorted(trees, want_t)
    known = (wr < trees.size) & (trees[np.minimum(wr, trees.size - 1)] == want_t)
    keys = np.searchsorted(trees, tree_ids) * span + (node_ids - lo)
    want = wr * span + (want_n - lo)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pos = np.searchsorted(sorted_keys, want, side="right") - 1      # the last of equal pairs
    pos0 = np.maximum(pos, 0)
    found = known & (pos >= 0) & (sorted_keys[pos0] == want)
    out[found] = order[pos0[found]]
    return out


def _x_rows(x):
    xh = _host(x)
    calc = _calc_dtype(xh.dtype)
    return xh.reshape(xh.shape[0], -1).astype(calc, copy=False) if xh.ndim > 1 else \
        xh.reshape(1, -1).astype(calc, copy=False), calc


@kernel("TreeEnsembleRegressor", domain=ML, since=1)
def tree_ensemble_regressor(info):
    forest, _, _ = _forest_from_legacy(info, "target")
    n_targets = int(info.attrs.get("n_targets", 1))
    agg = _text(info.attrs.get("aggregate_function", "SUM"))
    base = _attr(info, "base_values_as_tensor", "base_values")
    post = _post(_text(info.attrs.get("post_transform", "NONE")))

    def run(x):
        rows, calc = _x_rows(x)
        out, _ = forest.aggregate(forest.leaves(rows, calc), n_targets, agg, calc)
        if base is not None:
            out = out + base.astype(np.float64)
        # A single target gets no post transform but PROBIT, as in onnxruntime (softmax over one
        # value would be meaningless; ORT keeps the raw score for LOGISTIC as well).
        if post is not None and (n_targets > 1 or post is _probit):
            out = post(out)
        return (info.xp.asarray(out.astype(np.float32)),)

    return run


@kernel("TreeEnsembleClassifier", domain=ML, since=1)
def tree_ensemble_classifier(info):
    forest, class_ids, class_w = _forest_from_legacy(info, "class")
    labels = _labels(info, "classlabels_int64s", "classlabels_strings")
    n_classes = labels.size
    base = _attr(info, "base_values_as_tensor", "base_values")
    base = None if base is None else base.astype(np.float64).reshape(-1)
    post_name = _text(info.attrs.get("post_transform", "NONE"))
    post = _post(post_name)
    # Binary models often vote for a single class id only; onnxruntime then derives both columns
    # from that one score (and thresholds at 0.5 when all weights are positive, else at 0).
    binary_single = n_classes == 2 and np.unique(class_ids).size == 1
    all_positive = bool((class_w >= 0).all())

    def run(x):
        rows, calc = _x_rows(x)
        scores, hits = forest.aggregate(forest.leaves(rows, calc), n_classes, "SUM", calc)
        if binary_single:
            s = scores[:, int(np.unique(class_ids)[0])]
            if base is not None and base.size == 2:
                s = s + base[1]
            elif base is not None and base.size == 1:
                s = s + base[0]
            positive = s > 0.5 if all_positive else s > 0
            label = np.where(positive, labels[1], labels[0])
            if post_name == "LOGISTIC":
                p = _logistic(s)
                z = np.stack([1 - p, p], axis=1) if all_positive and (base is None or base.size < 2) else \
                    np.stack([_logistic(-s), p], axis=1)
            elif post_name == "NONE":
                z = np.stack([1 - s, s], axis=1) if all_positive and (base is None or base.size < 2) else \
                    np.stack([-s, s], axis=1)
            else:
                z2 = np.stack([-s, s], axis=1)
                z = post(z2)
            return label.astype(labels.dtype), info.xp.asarray(z.astype(np.float32))
        if base is not None and base.size == n_classes:
            scores = scores + base
            hits = np.ones_like(hits)
        # The top class is chosen among classes that received a vote (or have a base value).
        label = labels[np.argmax(np.where(hits, scores, -np.inf), axis=1)]
        z = post(scores) if post is not None else scores
        return label.astype(labels.dtype), info.xp.asarray(z.astype(np.float32))

    return run


# ---------------------------------------------------------------------------------------------------
# ZipMap: a classifier's probabilities as a sequence of maps


def _row_maps(keys: list):
    """``fn(rows) -> [dict(zip(keys, row)) for row in rows]``. For up to 64 keys it is a comprehension
    with one dict display, made here for these keys (passed in as default values, so any key works):
    ~3x faster than ``dict(zip(...))`` per row (256 rows of 3 classes: 77 -> 26 us)."""
    if not 0 < len(keys) <= 64:
        return lambda rows: [dict(zip(keys, r)) for r in rows]
    return eval(_row_maps_code(len(keys)), {"_keys": keys})  # noqa: S307 - source built from indices only


_ROW_MAPS_CODE: dict[int, object] = {}


def _row_maps_code(n: int):
    """The compiled lambda expression of ``_row_maps`` for ``n`` keys, compiled once per ``n`` (compiling
    it cost ~90 us of every ZipMap session's creation)."""
    code = _ROW_MAPS_CODE.get(n)
    if code is None:
        ks = [f"k{i}" for i in range(n)]
        vs = [f"v{i}" for i in range(n)]
        src = (f"lambda rows, {', '.join(f'{k}=_keys[{i}]' for i, k in enumerate(ks))}: "
               f"[{{{', '.join(f'{k}: {v}' for k, v in zip(ks, vs))}}} for {', '.join(vs)}, in rows]")
        code = _ROW_MAPS_CODE[n] = compile(src, "<zipmap rows>", "eval")
    return code


@kernel("ZipMap", domain=ML, since=1)
def zip_map(info):
    labels = info.attrs.get("classlabels_int64s")
    keys = [int(k) for k in labels] if labels is not None else \
        [_text(k) for k in info.attrs.get("classlabels_strings") or []]
    # onnxruntime's maps are std::maps: keys in ascending order, which a dict keeps as inserted
    order = sorted(range(len(keys)), key=keys.__getitem__)
    sorted_keys = [keys[i] for i in order]
    n_keys = len(keys)
    in_order = order == list(range(n_keys))   # then no column gather per run
    maps = _row_maps(sorted_keys)

    def run(x):
        x = _host(x)
        if x.ndim == 2:
            rows = x
        elif x.ndim == 1:
            rows = x.reshape(1, -1)
        else:
            raise ValueError(f"Zipmap only supports 1D or 2D input tensors, got shape {list(x.shape)}")
        if rows.shape[1] != n_keys:
            raise ValueError(f"Zipmap: the input has {rows.shape[1]} columns but there are {n_keys} class labels")
        # As onnxruntime returns them: Python int or str keys, Python float values.
        return (maps((rows if in_order else rows[:, order]).tolist()),)

    return run


# ---------------------------------------------------------------------------------------------------
# Maps in: DictVectorizer, CastMap (a map input is a Python dict, as onnxruntime takes it)


def _map_values_dtype(info):
    tp = info.input_types[0] if info.input_types else None
    if tp is not None and tp.WhichOneof("value") == "map_type":
        from onnx.helper import tensor_dtype_to_np_dtype

        return np.dtype(tensor_dtype_to_np_dtype(tp.map_type.value_type.tensor_type.elem_type))
    return None


@kernel("DictVectorizer", domain=ML, since=1)
def dict_vectorizer(info):
    """One row [1, len(vocabulary)]: each key's value at its vocabulary position, 0 elsewhere; keys
    outside the vocabulary are ignored (as onnxruntime)."""
    vocab = info.attrs.get("string_vocabulary")
    keys = [_text(k) for k in vocab] if vocab else [int(k) for k in info.attrs.get("int64_vocabulary") or []]
    where = {k: i for i, k in enumerate(keys)}
    declared = _map_values_dtype(info)

    def run(m):
        if not isinstance(m, dict):
            raise TypeError(f"DictVectorizer takes one map (a dict), got {type(m).__name__}")
        dt = declared or np.asarray(next(iter(m.values()), 0.0)).dtype
        out = np.full((1, len(keys)), "" if dt.kind in "OUS" else 0, dtype=object if dt.kind in "OUS" else dt)
        for k, v in m.items():
            i = where.get(_text(k) if vocab else k)
            if i is not None:
                out[0, i] = v
        return (out,)

    return run


@kernel("CastMap", domain=ML, since=1)
def cast_map(info):
    """A map int64 -> string | float to one row: the values in key order (DENSE), or at their keys up to
    max_map with the rest 0 (SPARSE), cast to float, int64 (truncated) or string ("%f", as onnxruntime)."""
    to = info.attrs.get("cast_to", "TO_FLOAT")
    dense = info.attrs.get("map_form", "DENSE") == "DENSE"
    max_map = int(info.attrs.get("max_map", 1))
    dt = {"TO_FLOAT": np.dtype(np.float32), "TO_INT64": np.dtype(np.int64), "TO_STRING": np.dtype(object)}[to]

    def cast(v):
        if to == "TO_STRING":
            return v if isinstance(v, str) else f"{float(v):f}"
        f = float(v)
        return np.float32(f) if to == "TO_FLOAT" else np.int64(int(f))

    def run(m):
        if not isinstance(m, dict):
            raise TypeError(f"CastMap takes one map (a dict), got {type(m).__name__}")
        if dense:
            items = sorted(m.items())
            out = np.empty((1, len(items)), dt)
            for i, (_, v) in enumerate(items):
                out[0, i] = cast(v)
        else:
            out = np.full((1, max_map), "0" if to == "TO_STRING" else 0, dt)
            for k, v in m.items():
                if 0 <= k < max_map:
                    out[0, k] = cast(v)
        return (out,)

    return run
