"""What every benchmark here shares about BLAS: the environment its measured processes run in (without
this machine's OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which pin old kernels and halve NumPy's BLAS
speed) and a one-line report of the BLAS kernel a process actually uses."""
from __future__ import annotations

import os

PINNED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def clean_env() -> dict[str, str]:
    """This process's environment without the BLAS pins, for the measured child processes."""
    return {k: v for k, v in os.environ.items() if k not in PINNED}


def blas_kernel() -> str:
    """The BLAS libraries loaded in this process: implementation, kernel architecture, threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    # oneMKL reports no architecture: its threading layer instead ("sequential", as the CPU provider loads it)
    return ", ".join(f"{i.get('internal_api')} {i.get('architecture') or i.get('threading_layer')} "
                     f"x{i.get('num_threads')}" for i in threadpool_info() if i.get("user_api") == "blas") \
        or "no BLAS loaded"
