"""Serving engineroom models to clients in any language, over the Open Inference Protocol (KServe v2).

``python -m engineroom serve --model-repository DIR`` serves a Triton-style model repository over REST
(Starlette on uvicorn, with the binary tensor data extension) and gRPC (grpcio), with dynamic batching
and Prometheus metrics; ``engineroom.serve.ray`` scales sessions out on Ray (Serve and Data). Needs the
``[serve]`` extra (``[ray]`` for Ray); importing this package needs neither.
"""
from __future__ import annotations
