"""What goes into and out of a run: the feed checks of one session (decided once at session creation), the
feed list a plan takes, and the outputs as ``run`` returns them.

A feed is checked as onnxruntime checks it (input names, element type, rank, fixed dimensions), with
onnxruntime's messages and error kinds; an array of the right type and shape passes through a short path.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from engineroom.errors import Fail, InvalidArgument
from engineroom.plan import Plan, type_string
from engineroom.values import OrtValue, held_by
from engineroom.views import value_dtype, value_shape

_ABSENT = object()


class InputCheck:
    """What a feed must be for one graph input."""

    def __init__(self, v: ir.Value):
        self.name = v.name
        self.is_tensor = isinstance(v.type, ir.TensorType)
        self.dtype = value_dtype(v)
        shape = value_shape(v)
        self.rank = None if shape is None else len(shape)
        self.fixed = [] if shape is None else [(i, d) for i, d in enumerate(shape) if isinstance(d, int)]
        # the short path: an ndarray of this very dtype object (NumPy's built-in dtypes are singletons; any
        # other takes the full check), not an object dtype (string feeds are converted to it)
        self._fast_dtype = self.dtype if self.is_tensor and self.dtype is not None and self.dtype.kind != "O" \
            else None
        self._shape = tuple(shape) if shape is not None and len(self.fixed) == len(shape) else None

    def check(self, x: Any, on_device: bool = False) -> Any:
        """``x`` as the plan takes it, or InvalidArgument. With ``on_device``, an array on a device
        (anything with ``dtype`` and ``shape``: CuPy, pyopencl) is checked and kept where it is."""
        if x.__class__ is np.ndarray and x.dtype is self._fast_dtype:
            shape = x.shape
            if shape == self._shape:
                return x
            if len(shape) == self.rank:
                for i, d in self.fixed:
                    if shape[i] != d:
                        break
                else:
                    return x
        if isinstance(x, OrtValue):
            x, provider = held_by(x)
            if provider is not None and not on_device:
                x = provider.to_host(x)
        if not self.is_tensor:
            return x
        if not isinstance(x, np.ndarray) and not (on_device and hasattr(x, "dtype") and hasattr(x, "shape")):
            x = self._convert(x)
        if self.dtype is not None and x.dtype != self.dtype and not (self.dtype.kind == "O" and x.dtype.kind in "OUS"):
            raise InvalidArgument(f"Unexpected input data type for input '{self.name}'. "
                                  f"Actual: ({_type_of(x.dtype)}) , expected: ({type_string(self.dtype)})")
        if self.dtype is not None and self.dtype.kind == "O" and x.dtype.kind in "US":
            x = x.astype(object)
        if self.rank is not None:
            if len(x.shape) != self.rank:
                raise InvalidArgument(f"Invalid rank for input: {self.name} Got: {len(x.shape)} "
                                      f"Expected: {self.rank} Please fix either the inputs/outputs or the model.")
            bad = [(i, x.shape[i], d) for i, d in self.fixed if x.shape[i] != d]
            if bad:
                lines = "".join(f" index: {i} Got: {g} Expected: {d}\n" for i, g, d in bad)
                raise InvalidArgument(f"Got invalid dimensions for input: {self.name} for the following indices\n"
                                      f"{lines} Please fix either the inputs/outputs or the model.")
        return x

    def _convert(self, x: Any) -> np.ndarray:
        """A feed that is not an array, as onnxruntime takes it: a list becomes an array of the input's element
        type; None, scalars and other objects are refused with onnxruntime's messages (RuntimeError kinds)."""
        if isinstance(x, list):
            try:
                return np.asarray(x, dtype=self.dtype) if self.dtype is not None else np.asarray(x)
            except (ValueError, TypeError) as e:
                raise Fail(f"Could not create tensor from given input list for input '{self.name}': {e}") from None
        if x is None:
            raise Fail(f"Missing Input: {self.name} (the feed's value is None; a tensor input needs an array)")
        if isinstance(x, (bool, int, float, complex, np.generic)):
            raise Fail(f"Unable to handle object of type {type(x)} for input '{self.name}': pass a numpy array "
                       f"or a list (onnxruntime takes no scalars)")
        if hasattr(x, "__array__") or hasattr(x, "__array_interface__"):
            return np.asarray(x)
        raise Fail(f"Input must be a list of dictionaries or a single numpy array for input '{self.name}'.")


class Feeds:
    """The feed checks of one session: its graph inputs in order (overridable initializers included, with
    their values as defaults) and its outputs by name."""

    def __init__(self, inputs: list[ir.Value], defaults: dict[str, Any], output_names: list[str]):
        self.order = [v.name for v in inputs]
        self.checks = {v.name: InputCheck(v) for v in inputs}
        self._defaults = defaults                       # name -> initializer tensor
        self._inputs = [(v.name, self.checks[v.name].check, defaults.get(v.name)) for v in inputs]
        self.out_index = {nm: i for i, nm in enumerate(output_names)}

    def prepare(self, input_feed: Any, output_names) -> tuple[list, list[int] | None]:
        """(the plan's feed list, the indices of the outputs asked for or None for all) of one ``run``."""
        if not isinstance(input_feed, dict):
            raise InvalidArgument(f"input_feed must be a dict of input name to value, got {type(input_feed).__name__}")
        idx = self.output_indices(output_names)
        feeds = []
        taken = 0
        get = input_feed.get
        for name, check, default in self._inputs:
            x = get(name, _ABSENT)
            if x is not _ABSENT:
                feeds.append(check(x))
                taken += 1
            elif default is not None:
                feeds.append(default.numpy())
            else:
                self.missing(input_feed)
        if taken != len(input_feed):   # a name that is no input
            bad = next(k for k in input_feed if k not in self.checks)
            raise InvalidArgument(f"Invalid input name: {bad}")
        return feeds, idx

    def from_bound(self, bound: dict[str, tuple], plan: Plan) -> list:
        """The feed list of IOBinding inputs (already checked): a device value stays on its device
        when the plan reads it only there, else it is brought to the host once, here."""
        feeds = []
        for k, name in enumerate(self.order):
            if name in bound:
                v, prov = bound[name]
                if prov is not None and not prov.device.is_host:
                    reads = plan.input_devices[k]
                    dev = prov.device
                    holder = plan.devices.get(dev)
                    if not (reads <= {dev} and (not reads or (holder is not None and holder.holds(v)))):
                        v = prov.to_host(v)
                feeds.append(v)
            elif name in self._defaults:
                feeds.append(self._defaults[name].numpy())
            else:
                self.missing(bound)
        return feeds

    def check_bound(self, name: str, value: Any) -> Any:
        """An IOBinding input, checked when it is bound (it may stay on its device)."""
        check = self.checks.get(name)
        if check is None:
            raise InvalidArgument(f"Invalid input name: {name}")
        return check.check(value, on_device=True)

    def missing(self, given) -> None:
        missing = [n for n in self.order if n not in given and n not in self._defaults]
        raise InvalidArgument(f"Required inputs ({missing}) are missing from input feed ({list(given)}).")

    def output_indices(self, output_names) -> list[int] | None:
        """The indices of ``output_names``; None for all outputs (no names given)."""
        if not output_names:
            return None
        try:
            return [self.out_index[n] for n in output_names]
        except KeyError as e:
            raise InvalidArgument(f"Invalid output name: {e.args[0]}") from None

    def output_index(self, name: str) -> int:
        try:
            return self.out_index[name]
        except KeyError:
            raise InvalidArgument(f"Invalid output name: {name}") from None


def _type_of(dtype) -> str:
    """A feed's type as the error names it; a byte-swapped array says so (onnxruntime would read its bytes
    in the machine's order, giving other numbers: refused instead, naming the fix)."""
    dtype = np.dtype(dtype)
    if dtype.byteorder in "<>" and dtype.isnative is False:
        return (f"{type_string(dtype.newbyteorder('='))} in the other byte order ('{dtype.str}'); pass "
                f"x.astype('{dtype.newbyteorder('=').str}')")
    return type_string(dtype)


def to_numpy(v: Any) -> Any:
    """An output as ``run`` returns it."""
    if v.__class__ is np.ndarray or isinstance(v, np.ndarray):
        # an output that is (a view of) a constant is shared with later runs: hand out a copy
        return v if v.flags.writeable else v.copy()
    if v is None or isinstance(v, (list, dict)):
        return v
    return np.asarray(v)
