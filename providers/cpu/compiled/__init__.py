"""The CPU provider's compiled loops: ``jit`` (the loader and the background build), ``aot_build`` (the
child process that runs numba's ahead-of-time compiler) and the ``_jit_<family>`` loop modules.

Kernels reach the loops only through their array module's shim (``array_module.arrays(xp).compiled``),
which offers them for NumPy arrays alone. ``_jit_rnn``, ``_jit_quant`` and ``_jit_llm`` still sit in the
kernel package above; ``jit`` finds loop modules in either place.
"""
