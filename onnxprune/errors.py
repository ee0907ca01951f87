"""The one error hierarchy of onnxprune.

Every error a user can cause (a bad file, a bad option, data that does not fit the model)
is an :class:`OnnxPruneError`; the CLI prints its message on one line and exits with
``exit_code``. Anything else escaping the API is a bug in onnxprune.
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""

    exit_code = 2

    def __str__(self) -> str:
        # One line whatever a hostile file names its tensors: control characters are escaped.
        text = super().__str__()
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UsageError(OnnxPruneError):
    """An option or argument that cannot be honoured (unknown pass, ratio out of range...)."""


class ModelLoadError(OnnxPruneError):
    """The model file is missing, not ONNX, truncated, or its external data is missing."""


class UnsafeModelError(ModelLoadError):
    """The model tries to reach outside its folder (external data paths, symlinks)."""


class InvalidModelError(OnnxPruneError):
    """The model loads but is not a valid graph (cycle, dangling input, unknown domain...)."""


class DataError(OnnxPruneError):
    """Sample / calibration / evaluation data that does not fit the model."""


class UnsupportedError(OnnxPruneError):
    """The model uses something onnxprune cannot process for the requested operation."""


class ParityError(OnnxPruneError):
    """The optimized model's outputs differ from the reference beyond the tolerance."""

    exit_code = 1


class BrokenOutputError(OnnxPruneError):
    """A result ONNX Runtime refuses: a bug in onnxprune (exit 3), never written."""

    exit_code = 3


def first_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of a library exception's message, to quote in one of ours (theirs run on
    with tracebacks and hints); the type's name alone when the message is empty."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return f"{type(exc).__name__}: {line}" if with_type else line
