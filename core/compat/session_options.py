"""What onnxruntime's session options that have no counterpart in engineroom do here, and the options applied
to a loaded model (``add_initializer``, ``add_free_dimension_override_by_denotation``).

An option accepted with no effect is never silent: a session whose options set one away from its default logs
one INFO line naming each and why (the same reasons as ``docs/onnxruntime-compatibility.md``).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from engineroom.errors import InvalidArgument

log = logging.getLogger("engineroom")

# attribute -> (its default, why setting it changes nothing in engineroom)
NO_EFFECT = {
    "enable_mem_pattern": (True, "the plan frees each value after its last use; no pre-planned memory pattern"),
    "enable_mem_reuse": (True, "buffers are released after their last use by the plan either way"),
    "execution_mode": (0, "the executor is sequential (kernels use the intra-op BLAS threads instead)"),
    "execution_order": (0, "the plan runs in the graph's topological order"),
    "inter_op_num_threads": (0, "the executor is sequential: there is no inter-op thread pool"),
    "log_verbosity_level": (0, "engineroom has a single VERBOSE level"),
    "use_per_session_threads": (True, "the BLAS thread pool is the process's (intra_op_num_threads sets it)"),
}


def log_no_effect(so, level: int) -> None:
    """One INFO line naming the options set away from their defaults that have no effect here."""
    if level > logging.INFO:
        return
    changed = [f"{name}={getattr(so, name)!s} ({why})" for name, (default, why) in NO_EFFECT.items()
               if getattr(so, name) != default]
    if so._custom_op_libraries:
        changed.append(f"register_custom_ops_library({', '.join(so._custom_op_libraries)}) (engineroom cannot "
                       f"load onnxruntime's native custom-op kernels; their ops need an engineroom provider)")
    if so._ep_context_read_func is not None:
        changed.append("set_ep_context_data_read_func (no engineroom provider reads EP-context blobs)")
    if changed:
        log.info("SessionOptions accepted with no effect in engineroom: %s", "; ".join(changed))


def apply_to_model(model: ir.Model, so) -> None:
    """Replace initializers given by ``add_initializer`` and fix free input dims by their denotation."""
    graph = model.graph
    for name, val in so._initializers.items():
        init = graph.initializers.get(name)
        if init is None:
            raise InvalidArgument(f"add_initializer: the model has no initializer named '{name}'")
        arr = np.asarray(val.numpy())
        old = init.const_value
        if old is not None and (tuple(old.shape) != arr.shape or np.dtype(old.dtype.numpy()) != arr.dtype):
            raise InvalidArgument(f"add_initializer: '{name}' is {arr.dtype} {list(arr.shape)}, the model's "
                                  f"initializer is {np.dtype(old.dtype.numpy())} {list(old.shape)}")
        init.const_value = ir.Tensor(arr, name=name)
    if so._free_dims_by_denotation:
        for v in graph.inputs:
            shape = v.shape
            if shape is None:
                continue
            dims = list(shape)
            fixed = False
            for i, d in enumerate(dims):
                den = shape.get_denotation(i)
                if den in so._free_dims_by_denotation and not isinstance(d, int):
                    dims[i] = so._free_dims_by_denotation[den]
                    fixed = True
            if fixed:
                new = ir.Shape(dims)
                for i in range(len(dims)):
                    if shape.get_denotation(i):
                        new.set_denotation(i, shape.get_denotation(i))
                v.shape = new
