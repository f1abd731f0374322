"""Runs the REST (uvicorn) and gRPC (grpcio asyncio) front ends on one event loop over one model registry."""
from __future__ import annotations

import asyncio
import signal
import sys
import threading


async def serve(repository: str, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
                max_request_bytes: int = 64 << 20, log_level: str = "warning") -> None:
    import uvicorn

    from engineroom.serve.grpc_service import build_server
    from engineroom.serve.metrics import Metrics
    from engineroom.serve.registry import ModelRegistry
    from engineroom.serve.rest import build_app

    metrics = Metrics()
    registry = ModelRegistry(repository, metrics)       # sessions are created here, once per instance
    await registry.start()
    gaddr = f"[{host}]:{grpc_port}" if ":" in host else f"{host}:{grpc_port}"
    grpc_server, bound = build_server(registry, gaddr, max_request_bytes)
    await grpc_server.start()
    config = uvicorn.Config(build_app(registry, metrics, max_request_bytes), host=host, port=http_port,
                            log_level=log_level, access_log=False, lifespan="off")
    http = uvicorn.Server(config)
    for name, versions in sorted(registry.models.items()):
        for v, m in sorted(versions.items(), key=lambda kv: int(kv[0])):
            c = m.config
            batching = (f"dynamic batching up to {c.max_batch_size} rows, queue delay {c.max_queue_delay_us} us"
                        if c.dynamic_batching else f"max_batch_size {c.max_batch_size}, no dynamic batching")
            print(f"model {name} version {v}: {len(m.sessions)} instance(s) on {', '.join(m.providers)}; {batching}",
                  flush=True)
    print(f"serving {repository}: HTTP on {host}:{http_port}, gRPC on {host}:{bound}", flush=True)
    # uvicorn catches SIGINT / SIGTERM, drains HTTP, then re-raises the signal to the handler it found: this one
    # only notes it, so that gRPC and the model queues are shut down too and the process exits with 0.
    noted = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda s, f: noted.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        await http.serve()                               # returns on SIGINT / SIGTERM
    finally:
        await grpc_server.stop(grace=2)
        await registry.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args) -> int:
    """The ``engineroom serve`` command."""
    missing = []
    for mod in ("uvicorn", "starlette", "grpc", "prometheus_client"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        print(f"error: engineroom serve needs the [serve] extra (pip install 'engineroom[serve]'); "
              f"missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    import engineroom as ort

    try:
        asyncio.run(serve(args.model_repository, args.host, args.http_port, args.grpc_port,
                          args.max_request_bytes, args.log_level))
    except ort.EngineroomError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def add_parser(subparsers) -> None:
    """Adds ``serve`` to the ``engineroom`` command's subparsers."""
    sp = subparsers.add_parser("serve", help="serve a model repository over the Open Inference Protocol "
                                             "(REST and gRPC)")
    sp.add_argument("--model-repository", required=True, metavar="DIR",
                    help="Triton-style repository: DIR/NAME/VERSION/model.onnx, optional DIR/NAME/config.json")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--http-port", type=int, default=8000, help="REST port (default 8000)")
    sp.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    sp.add_argument("--max-request-bytes", type=int, default=64 << 20,
                    help="largest request body accepted, REST and gRPC (default 64 MiB)")
    sp.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                    help="uvicorn's log level (default warning)")
    sp.set_defaults(fn=run)
