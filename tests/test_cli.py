"""The command line (``python -m engineroom ...``), run as a user runs it: in a subprocess, on small models
built here with onnx.helper (and on the zoo in ../shared/models where present). Numbers are checked
against onnxruntime or the zoo's PyTorch outputs; the HTML page is loaded in headless Chromium."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import pytest
from conftest import PLUGINS, plugin_site, zoo_path
from onnx import TensorProto, helper

CHROMIUM = "/usr/bin/chromium"


def cli(*args, env=None, check=True):
    r = subprocess.run([sys.executable, "-m", "engineroom", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def one_error(r) -> str:
    """The run failed with exactly one ``error:`` line and no traceback; returns that line."""
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.fixture(scope="module")
def seq_model(tmp_path_factory):
    """y = MatMul(x, W) + b with x [batch, seq, 8]; a producer and metadata to inspect."""
    rng = np.random.default_rng(1)
    w = helper.make_tensor("W", TensorProto.FLOAT, [8, 4], rng.standard_normal(32).astype(np.float32).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [4], rng.standard_normal(4).astype(np.float32).tolist())
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="proj"),
         helper.make_node("Add", ["h", "b"], ["y"], name="bias")], "seqgraph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="test-producer",
                          producer_version="9.9")
    helper.set_model_props(m, {"author": "tests", "purpose": "cli"})
    p = tmp_path_factory.mktemp("cli") / "seq.onnx"
    onnx.save(m, str(p))
    return p


def test_version():
    import engineroom

    r = cli("--version")
    assert r.stdout.startswith(f"engineroom {engineroom.__version__} (numpy {np.__version__}, onnx {onnx.__version__}")


def test_run_says_what_it_fed(seq_model):
    r = cli("run", seq_model, "--repeat", "2")
    out = r.stdout
    assert re.search(r"session created in \d+\.\d+ ms", out)
    assert "placement: CPUExecutionProvider took 2/2 nodes" in out
    assert "input  x: shape (1, 1, 8), dtype float32, random normal" in out
    assert "symbolic dims: batch=1 (default), seq=1 (default) — set them with --dim NAME=V" in out
    assert "output y: shape (1, 1, 4), dtype float32" in out
    assert re.search(r"latency: first run \d+\.\d+ ms, median \d+\.\d+ ms over 2 runs", out)
    r = cli("run", seq_model, "--dim", "seq=5", "--dim", "batch=3", "--repeat", "1", "--threads", "1")
    assert "input  x: shape (3, 5, 8)" in r.stdout and "batch=3 (--dim), seq=5 (--dim)" in r.stdout
    assert "output y: shape (3, 5, 4), dtype float32" in r.stdout and "over 1 runs" in r.stdout


@pytest.mark.parametrize("key", ["x", "in_0", "in0"])
def test_run_inputs_from_npz_match_onnxruntime(seq_model, tmp_path, key):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle")
    x = np.random.default_rng(2).standard_normal((2, 7, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", **{key: x, "out_0": np.zeros(1)})   # out_K keys are reference outputs: ignored
    r = cli("run", seq_model, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz", "--repeat", "1")
    assert f"input  x: shape (2, 7, 8), dtype float32, from in.npz '{key}'" in r.stdout
    assert "batch=2 (from --inputs), seq=7 (from --inputs)" in r.stdout
    got = np.load(tmp_path / "out.npz")["y"]
    want = ort.InferenceSession(str(seq_model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_usage_mistakes_are_one_line(seq_model, tmp_path):
    assert "doesn't exist" in one_error(cli("run", tmp_path / "missing.onnx", check=False))
    np.savez(tmp_path / "bad.npz", input=np.zeros((1, 1, 8), np.float32))
    line = one_error(cli("run", seq_model, "--inputs", tmp_path / "bad.npz", check=False))
    assert "'input'" in line and "its inputs: x" in line
    r = cli("run", seq_model, "--repeat", "0", check=False)   # argparse's own error: usage, then the reason
    assert r.returncode == 2 and "--repeat: must be >= 1" in r.stderr and "Traceback" not in r.stderr


def test_more_usage_mistakes_in_process(seq_model, tmp_path, capsys):
    """The same entry point, called in this process (a subprocess each would cost seconds)."""
    from engineroom.cli import main

    def error(*argv) -> str:
        assert main([*map(str, argv)]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
        return err[0]

    assert "NAME=VALUE" in error("run", seq_model, "--dim", "seq")
    assert "whole number" in error("run", seq_model, "--dim", "seq=abc")
    line = error("inspect", seq_model, "--dim", "sequence=4")
    assert "--dim sequence:" in line and "batch, seq" in line
    assert "no such file" in error("run", seq_model, "--inputs", tmp_path / "none.npz")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert "junk.onnx is not an ONNX model" in error("inspect", tmp_path / "junk.onnx")
    np.savez(tmp_path / "wrongtype.npz", x=np.zeros((1, 1, 8), np.int32))
    assert "INVALID_ARGUMENT" in error("run", seq_model, "--inputs", tmp_path / "wrongtype.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    assert "numpy.savez" in error("run", seq_model, "--inputs", tmp_path / "single.npy")
    for argv in (["run", seq_model, "--repeat", "-3"], ["bench", seq_model, "--repeat", "0"],
                 ["bench", seq_model, "--warmup", "-1"], ["run", seq_model, "--threads", "x"]):
        with pytest.raises(SystemExit) as e:
            main([*map(str, argv)])
        assert e.value.code == 2
        assert "error: argument" in capsys.readouterr().err


def test_run_without_a_model_uses_the_default():
    r = cli("run", "--repeat", "1", check=False)
    try:
        from engineroom.models import default_model_path  # noqa: F401 - only whether it exists
    except ImportError:
        assert "no MODEL given" in one_error(r)
        return
    assert r.returncode == 0, r.stderr
    assert "(the default model" in r.stdout and "placement:" in r.stdout and "latency:" in r.stdout


def test_inspect(seq_model):
    r = cli("inspect", seq_model)
    out = r.stdout
    assert "IR version: " + str(onnx.load(str(seq_model)).ir_version) in out
    assert "producer: test-producer 9.9" in out and "opset imports: ai.onnx 17" in out
    assert "author=tests" in out and "purpose=cli" in out
    assert "input  x: tensor(float) ['batch', 'seq', 8]" in out
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.startswith("  ") and len(ln.split()) == 3}
    # MatMul + Add of a constant bias fuse into one Gemm-like node or stay two: either way the counts add up
    assert rows["MatMul"][0] == "1" and rows["Add"][0] == "1" and rows["total"] == ["2", rows["total"][1]]
    assert "partitions (1, in execution order):" in out and "0: CPUExecutionProvider" in out
    assert "copies inserted: 0" in out
    assert "proj" not in out   # node names only with --verbose
    assert "proj" in cli("inspect", seq_model, "--verbose").stdout


# -- two fake providers (tests/plugins) plus the CPU: copies between three devices -----------------------
@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """An environment whose Python finds tests/plugins/fake_providers.py through an entry point."""
    site = plugin_site(tmp_path_factory, "engineroom-cli-test-plugins",
                       "[engineroom.providers]\nAddMulExecutionProvider = fake_providers:AddMulExecutionProvider\n"
                       "NegExecutionProvider = fake_providers:NegExecutionProvider\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([site, PLUGINS, env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def three_provider_model(tmp_path_factory):
    """Add, Mul (AddMul provider), Neg, Relu (Neg provider), Sigmoid (CPU) interleaved: every edge crosses."""
    nodes = [helper.make_node("Add", ["x", "x"], ["a"], name="add"),
             helper.make_node("Neg", ["a"], ["n"], name="neg"),
             helper.make_node("Sigmoid", ["n"], ["s"], name="sig"),
             helper.make_node("Mul", ["s", "a"], ["m"], name="mul"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "three", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    p = tmp_path_factory.mktemp("three") / "three.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    return p


PROVIDERS = "AddMulExecutionProvider,NegExecutionProvider,CPUExecutionProvider"


def test_run_and_inspect_three_providers(three_provider_model, plugin_env, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle")
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    r = cli("run", three_provider_model, "--providers", PROVIDERS, "--inputs", tmp_path / "x.npz",
            "--outputs", tmp_path / "y.npz", "--repeat", "1", env=plugin_env)
    assert "AddMulExecutionProvider took 2/5 nodes" in r.stdout and "NegExecutionProvider took 2/5 nodes" in r.stdout
    want = ort.InferenceSession(str(three_provider_model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], want, rtol=1e-5, atol=1e-6)
    n_copies = int(re.search(r"(\d+) copies inserted", r.stdout).group(1))
    r = cli("inspect", three_provider_model, "--providers", PROVIDERS, "--verbose", env=plugin_env)
    assert f"copies inserted: {n_copies}" in r.stdout and n_copies >= 6
    assert "partitions (5, in execution order):" in r.stdout
    assert re.search(r"^  x: cpu:0 -> fake:0$", r.stdout, re.M)


def _chromium_dom(page: str) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                            "--dump-dom", "file://" + page], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"headless Chromium not found at {CHROMIUM} "
                    "(Debian: apt-get install chromium)")
def test_html_page_in_chromium(three_provider_model, plugin_env, tmp_path):
    page = tmp_path / "three.html"
    r = cli("inspect", three_provider_model, "--providers", PROVIDERS, "--html", page, env=plugin_env)
    assert f"graph page written to {page} (5 nodes on 3 provider(s)," in r.stdout
    text = page.read_text()
    # self-contained: nothing to fetch (the only URL is the SVG namespace, which is a name, not a fetch)
    assert not re.search(r"""(src|href)\s*=|<link|@import|url\((?!#)""", text)
    dom, log = _chromium_dom(str(page))
    consoles = [ln for ln in log.splitlines() if ":CONSOLE" in ln]
    assert not consoles, consoles   # the page logs nothing: any console line is an error or a failed load
    assert re.search(r'<html[^>]*data-ready="1"', dom), "the page's script did not run to the end"
    assert not re.search(r"<html[^>]*data-errors", dom), "the page raised an error"
    fills: dict[str, set[str]] = {}
    for ep, fill in re.findall(r'<g class="node op"[^>]*data-ep="(\w+)"[^>]*>.*?<rect [^>]*fill="(#\w+)"', dom,
                                re.S):
        fills.setdefault(ep, set()).add(fill)
    assert set(fills) == {"AddMulExecutionProvider", "NegExecutionProvider", "CPUExecutionProvider"}
    assert all(len(f) == 1 for f in fills.values()), fills           # one colour per provider
    assert len({next(iter(f)) for f in fills.values()}) == 3          # and a different one each
    legend = dict(re.findall(r'<li class="provider" data-ep="(\w+)">.*?fill="(#\w+)"', dom, re.S))
    assert legend == {ep: next(iter(f)) for ep, f in fills.items()}
    n_copies = len(re.findall(r'<g class="node copy"', dom))
    assert n_copies >= 6 and f"copy between devices <span class=\"n\">{n_copies}</span>" in dom


def test_bench(seq_model):
    r = cli("bench", seq_model, "--repeat", "30", "--warmup", "2", "--providers", "CPUExecutionProvider",
            "--dim", "seq=3", "--threads", "1")
    m = re.search(r"latency over 30 runs: p50 ([\d.]+) ms, p90 ([\d.]+) ms, p99 ([\d.]+) ms", r.stdout)
    assert m and 0 < float(m.group(1)) <= float(m.group(2)) <= float(m.group(3))
    assert "then 2 warmup runs" in r.stdout and "input  x: shape (1, 3, 8)" in r.stdout
    assert "30/30" in r.stderr   # tqdm's bar, on stderr
    assert "30/30" not in cli("bench", seq_model, "--repeat", "30", "--no-progress").stderr


# -- the zoo ---------------------------------------------------------------------------------------------
def test_zoo_gpt2_on_its_inputs(tmp_path):
    path = zoo_path("gpt2_tiny")
    r = cli("run", path, "--repeat", "1")
    assert "symbolic dims: batch=1 (default), seq=1 (default)" in r.stdout   # says so, not silently
    r = cli("run", path, "--inputs", path[:-5] + ".io.npz", "--outputs", tmp_path / "o.npz", "--repeat", "1")
    assert "input  input_ids: shape (1, 64), dtype int64, from gpt2_tiny.io.npz 'in_0'" in r.stdout
    ref = np.load(path[:-5] + ".io.npz")["out_0"]
    got = np.load(tmp_path / "o.npz")["logits"]
    assert got.shape == ref.shape
    assert float(np.max(np.abs(got - ref))) <= 1e-3 * float(np.max(np.abs(ref)))


def test_zoo_resnet18_page(tmp_path):
    path = zoo_path("resnet18")
    page = tmp_path / "r.html"
    r = cli("inspect", path, "--html", page)
    assert "Conv" in r.stdout and "total" in r.stdout and max(map(len, r.stdout.splitlines())) < 200
    assert page.stat().st_size > 10_000
    if shutil.which(CHROMIUM):
        dom, log = _chromium_dom(str(page))
        assert re.search(r'<html[^>]*data-ready="1"', dom) and ":CONSOLE" not in log


def test_compile_builds_what_is_missing_and_names_unknown_providers():
    """`compile` with everything built already has nothing to do; a provider that is not installed is
    named and makes the exit status non-zero."""
    from engineroom.providers.cpu.compiled import jit as _jit

    if not _jit.available():
        pytest.skip("numba is not installed (jit extra)")
    for name in _jit.module_names():        # this process waits for them (ENGINEROOM_JIT=wait in conftest)
        _jit.load(name)
    r = cli("compile", "--providers", "CPUExecutionProvider")
    assert "CPUExecutionProvider: nothing to build" in r.stdout
    r = cli("compile", "--providers", "NoSuchExecutionProvider", check=False)
    assert r.returncode == 1 and "NoSuchExecutionProvider: not available here" in r.stdout
