"""The process-wide default logger, as onnxruntime's ``set_default_logger_*`` functions set it.

engineroom logs through the standard ``logging`` module (logger ``"engineroom"``). onnxruntime's severities
(0 VERBOSE, 1 INFO, 2 WARNING, 3 ERROR, 4 FATAL) map onto logging's levels; a session or run whose own
``log_severity_level`` is -1 (onnxruntime's default) uses the default severity set here.
"""
from __future__ import annotations

import logging
import operator
from typing import Callable

log = logging.getLogger("engineroom")

SEVERITY_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR, 4: logging.CRITICAL}
_default = {"severity": 2, "verbosity": 0}
_callback_handler: list[logging.Handler] = []


def _severity(level) -> int:
    try:
        level = operator.index(level)
    except TypeError:
        raise TypeError(f"a log severity must be an int (0 VERBOSE .. 4 FATAL), got {type(level).__name__}") from None
    if level not in SEVERITY_LEVELS:
        raise ValueError(f"a log severity must be 0 (VERBOSE) .. 4 (FATAL), got {level}")
    return level


def set_default_logger_severity(severity: int) -> None:
    """Sets the default logging severity: 0 VERBOSE, 1 INFO, 2 WARNING (the default), 3 ERROR, 4 FATAL."""
    _default["severity"] = _severity(severity)
    log.setLevel(SEVERITY_LEVELS[_default["severity"]])


def set_default_logger_verbosity(verbosity: int) -> None:
    """Sets the default verbosity of VERBOSE messages (kept for onnxruntime's API: engineroom has one
    verbose level, so any verbosity shows every VERBOSE message once severity 0 is set)."""
    _default["verbosity"] = operator.index(verbosity)


def default_severity() -> int:
    return _default["severity"]


def logging_level(severity: int) -> int:
    """The ``logging`` level of an onnxruntime severity; -1 means the default severity."""
    return SEVERITY_LEVELS.get(int(severity) if int(severity) >= 0 else _default["severity"], logging.WARNING)


class _CallbackHandler(logging.Handler):
    """Hands each record to an onnxruntime-style callback ``(severity, category, logid, code_location, message)``."""

    def __init__(self, callback: Callable) -> None:
        super().__init__()
        self.callback = callback
        self._to_severity = {v: k for k, v in SEVERITY_LEVELS.items()}

    def emit(self, record: logging.LogRecord) -> None:
        sev = self._to_severity.get(record.levelno, 2)
        try:
            self.callback(sev, record.name, getattr(record, "logid", ""), f"{record.pathname}:{record.lineno}",
                          record.getMessage())
        except Exception:  # noqa: BLE001 - a failing user callback must not break a session
            self.handleError(record)


def set_default_logger_callback(callback: Callable | None) -> None:
    """Route engineroom's log messages to ``callback(severity, category, logid, code_location, message)``
    (None removes it), as onnxruntime's ``set_default_logger_callback`` does."""
    for h in _callback_handler:
        log.removeHandler(h)
    _callback_handler.clear()
    if callback is not None:
        if not callable(callback):
            raise TypeError("the logger callback must be callable")
        h = _CallbackHandler(callback)
        log.addHandler(h)
        _callback_handler.append(h)
