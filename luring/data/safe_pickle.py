"""A restricted unpickler for data files (CIFAR-10 python batches): it rebuilds plain numpy
arrays, numpy scalars, lists, dicts, tuples, bytes, str and numbers, and nothing else.

Unpickling runs whatever callables a pickle names, so plain :func:`pickle.load` on a file from
the internet is arbitrary code execution. :class:`RestrictedUnpickler` overrides
``find_class``: the only globals a pickle may name are the ones numpy's own ``__reduce__``
uses — ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``, ``numpy.(_)core.multiarray.scalar``,
``numpy.(_)core.numeric._frombuffer`` — plus ``_codecs.encode`` limited to latin-1 (how
Python 3 writes ``bytes`` under protocols 0-2). Anything else (``os.system``,
``builtins.eval``, ``subprocess.Popen``…) is refused with a LuringError naming the global,
before it is called. Persistent ids are refused too.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import io
import pickle
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from luring.errors import LuringError

__all__ = ["RestrictedUnpickler", "ForbiddenGlobal", "safe_loads", "safe_load", "ALLOWED"]


class ForbiddenGlobal(LuringError):
    """A pickle named a global outside :data:`ALLOWED`."""


def _numpy_attr(module: str, name: str) -> Any:
    """``module.name`` from numpy 2's ``numpy._core`` (or numpy 1's ``numpy.core``), imported
    directly so that numpy 2's deprecated ``numpy.core`` shim is never touched."""
    import importlib

    for mod in (module.replace("numpy.core.", "numpy._core."), module.replace(
            "numpy._core.", "numpy.core.")):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy lacks {module}.{name}")  # pragma: no cover - numpy layout change


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to latin-1, which is all protocol-2 ``bytes`` need."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(obj, str):
        raise ForbiddenGlobal(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin-1", errors)


def _allowed() -> dict[tuple[str, str], Callable[..., Any] | type]:
    reconstruct = _numpy_attr("numpy._core.multiarray", "_reconstruct")
    scalar = _numpy_attr("numpy._core.multiarray", "scalar")
    frombuffer = _numpy_attr("numpy._core.numeric", "_frombuffer")
    table: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = _allowed()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` only returns the globals in :data:`ALLOWED`."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (``__builtin__``, ``commands``...) mapped as pickle itself would, so
        # that the error names the global the usual way; the allow-list is unaffected.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = ALLOWED.get((module, name))
        if obj is None:
            raise ForbiddenGlobal(
                f"refusing to unpickle the global {module}.{name}: only plain numpy arrays, "
                "lists, dicts, bytes, str and numbers are allowed in data files")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenGlobal("refusing to unpickle a persistent id in a data file")


def safe_load(fh: BinaryIO, *, source: str = "pickle", encoding: str = "latin1") -> Any:
    """Unpickle from the binary file ``fh`` with :class:`RestrictedUnpickler`. ``encoding``
    decodes Python 2 ``str`` objects (latin1, as numpy needs for Python 2 arrays). A forbidden
    global or a malformed pickle is a LuringError naming ``source``."""
    try:
        return RestrictedUnpickler(fh, encoding=encoding).load()
    except ForbiddenGlobal as exc:
        raise ForbiddenGlobal(f"{source}: {exc}; the file is not a plain data pickle (it may be "
                              "malicious); delete it and download it again") from None
    except LuringError:
        raise
    except Exception as exc:  # any malformed pickle is a user error
        raise LuringError(f"{source} is not a readable pickle ({type(exc).__name__}: {exc}); it "
                          "may be truncated or corrupt: delete it and download it again") from None


def safe_loads(data: bytes, *, source: str = "pickle", encoding: str = "latin1") -> Any:
    """:func:`safe_load` on bytes."""
    return safe_load(io.BytesIO(data), source=source, encoding=encoding)
