"""ai.onnx.ml tree ensembles (issue 16) against onnxruntime on both paths: the compiled walk
(``_jit_trees``: one loop per sample and tree, votes summed in the loop) and the NumPy level-by-level
walk. Forests from scikit-learn (classifiers, binary and multi-class, regressors, NaN features that
follow a missing-value branch) and hand-made ones (TreeEnsemble v5, float64 input, set membership
and malformed structures that must keep to the NumPy path)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import check_outputs
from conftest import run_both as both
from jit_paths import JIT_PATHS, choose_path

import engineroom as er

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle of these tests")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402 - after the importorskip

RNG = np.random.default_rng(16)


@pytest.fixture(params=JIT_PATHS)
def tree_path(request, monkeypatch):
    return choose_path(request, monkeypatch, "trees")


check = functools.partial(check_outputs, tol=1e-5)


def _sklearn_model(est, n_features: int) -> bytes:
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx converts the scikit-learn forests")
    from skl2onnx.common.data_types import FloatTensorType

    opts = {id(est): {"zipmap": False}} if hasattr(est, "predict_proba") else None
    m = skl2onnx.convert_sklearn(est, initial_types=[("X", FloatTensorType([None, n_features]))],
                                 options=opts, target_opset={"": 17, "ai.onnx.ml": 3})
    return m.SerializeToString()


def _data(n=300, f=6, nan_frac=0.0):
    x = (RNG.standard_normal((n, f)) * np.array([1, 10, 0.1, 5, 1, 100])[:f]).astype(np.float32)
    y = (x[:, 0] + 0.1 * x[:, 1] > 0).astype(np.int64) + (x[:, 3] > 2).astype(np.int64)
    if nan_frac:
        x[RNG.random(x.shape) < nan_frac] = np.nan
    return x, y


@pytest.mark.parametrize("kind", ["rf_multi", "rf_binary", "extra_multi", "gb_binary", "gb_multi"])
def test_sklearn_classifiers(tree_path, kind):
    ens = pytest.importorskip("sklearn.ensemble", reason="scikit-learn builds the forests")
    x, y = _data()
    if kind.endswith("binary"):
        y = (y > 0).astype(np.int64)
    est = {"rf": lambda: ens.RandomForestClassifier(n_estimators=12, max_depth=8, random_state=0),
           "extra": lambda: ens.ExtraTreesClassifier(n_estimators=10, random_state=0),
           "gb": lambda: ens.GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0)}[
        kind.split("_")[0]]()
    est.fit(x, y)
    xt, _ = _data(257)
    ref, got = both(_sklearn_model(est, x.shape[1]), {"X": xt})
    check(ref, got)
    tree_path.expect("forest_walk")     # one comparison (<=) everywhere, no missing-value branches
    assert (got[0] == est.predict(xt)).mean() > 0.99    # and the labels are scikit-learn's too


@pytest.mark.parametrize("kind", ["rf", "gb"])
def test_sklearn_regressors(tree_path, kind):
    ens = pytest.importorskip("sklearn.ensemble", reason="scikit-learn builds the forests")
    x, _ = _data()
    y = (x[:, 0] * 2 + np.sin(x[:, 1])).astype(np.float32)
    est = (ens.RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0) if kind == "rf" else
           ens.GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0)).fit(x, y)
    xt, _ = _data(64)
    ref, got = both(_sklearn_model(est, x.shape[1]), {"X": xt})
    check(ref, got, tol=1e-4)
    tree_path.expect("forest_walk")
    tree_path.expect("leaf_sums", taken=False)      # nothing ran since the check above


def test_forest_fitted_with_nan(tree_path):
    """A forest fitted on data with NaN, fed NaN: skl2onnx writes nodes_missing_value_tracks_true all 0
    here, so NaN takes each comparison's false branch, on the lockstep walk (a node that tracks missing
    values takes the per-node walk: test_tree_ensemble_v5)."""
    ens = pytest.importorskip("sklearn.ensemble", reason="scikit-learn builds the forests")
    x, y = _data(400, nan_frac=0.1)
    est = ens.RandomForestClassifier(n_estimators=8, max_depth=6, random_state=0).fit(x, y)
    xt, _ = _data(200, nan_frac=0.2)
    ref, got = both(_sklearn_model(est, x.shape[1]), {"X": xt})
    check(ref, got, tol=1e-5)
    tree_path.expect("forest_walk")


def _v5_model(dtype, modes, membership=None, aggregate=1, n_targets=2, missing=(1, 0, 0)):
    """Two trees over 3 features, TreeEnsemble (ai.onnx.ml 5): tree 0 splits twice, tree 1 is a leaf."""
    np_dt = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    kw = {}
    if membership is not None:
        kw["membership_values"] = helper.make_tensor("mv", dtype, [len(membership)],
                                                     np.asarray(membership, np_dt).tolist())
    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml",
        n_targets=n_targets, aggregate_function=aggregate, post_transform=0,
        tree_roots=[0, 2],
        nodes_featureids=[0, 2, 1], nodes_modes=helper.make_tensor("m", TensorProto.UINT8, [3], modes),
        nodes_splits=helper.make_tensor("s", dtype, [3], [0.25, -1.0, 0.0]),
        nodes_truenodeids=[1, 0, 3], nodes_trueleafs=[0, 1, 1],
        nodes_falsenodeids=[2, 1, 4], nodes_falseleafs=[1, 1, 1],
        nodes_missing_value_tracks_true=list(missing),
        leaf_targetids=[0, 1, 0, 1, 0], leaf_weights=helper.make_tensor(
            "w", dtype, [5], [1.0, 2.0, 3.0, -4.0, 0.5]),
        **kw)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", dtype, [None, 3])],
                          [helper.make_tensor_value_info("Y", dtype, [None, n_targets])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21),
                                               helper.make_opsetid("ai.onnx.ml", 5)]).SerializeToString()


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
@pytest.mark.parametrize("modes,aggregate", [([0, 1, 3], 1), ([2, 5, 4], 0), ([1, 0, 2], 1)])
def test_tree_ensemble_v5(tree_path, dtype, modes, aggregate):
    np_dt = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    x = RNG.standard_normal((50, 3)).astype(np_dt)
    x[::7, 0] = np.nan
    x[::5, 2] = -1.0     # the equality splits hit
    x[1::6, 1] = 0.0
    ref, got = both(_v5_model(dtype, modes, aggregate=aggregate), {"X": x})
    check(ref, got, tol=1e-6)
    tree_path.expect("forest_leaves")


def test_set_membership_keeps_numpy_walk(tree_path):
    x = np.array([[1.0, 0.0, 2.0], [4.0, 1.0, 3.0], [np.nan, 0.5, -1.0]], np.float32)
    ref, got = both(_v5_model(TensorProto.FLOAT, [6, 0, 1], membership=[1.0, 4.0, np.nan]), {"X": x})
    check(ref, got, tol=1e-6)
    tree_path.expect("forest_leaves", taken=False)
    tree_path.expect("forest_walk", taken=False)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
@pytest.mark.parametrize("mode", [0, 1, 2, 3, 4, 5])
def test_tree_ensemble_one_mode_takes_the_lockstep_walk(tree_path, dtype, mode):
    """Every node compares alike and none tracks missing values: the compiled lockstep walk (leaves as
    self-looping nodes, trees of depth 2 and 0), NaN and equal features included, against onnxruntime."""
    np_dt = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    x = RNG.standard_normal((150, 3)).astype(np_dt)   # more than one block of 64 samples
    x[::7, 0] = np.nan
    x[::5, 2] = -1.0
    x[1::6, 1] = 0.0
    x[2::9, 0] = 0.25
    ref, got = both(_v5_model(dtype, [mode] * 3, missing=(0, 0, 0)), {"X": x})
    check(ref, got, tol=1e-6)
    tree_path.expect("forest_walk")
    tree_path.expect("forest_leaves", taken=False)


def test_fewer_features_than_the_trees_read():
    """A feature index past the input's width is an error, never a read past the row."""
    x = np.zeros((2, 2), np.float32)
    s = er.InferenceSession(_v5_model(TensorProto.FLOAT, [0, 1, 3]), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception) as e:
        s.run(None, {"X": x})
    assert "index" in str(e.value).lower() or "bounds" in str(e.value).lower() or "shape" in str(e.value).lower()
