"""The restricted unpickler of CIFAR-10 python batches (Krizhevsky 2009).

An official batch is a protocol-2 pickle written by Python 2's cPickle: a dict of byte
strings, lists of ints or strings, and uint8 numpy arrays, each array pickled as
``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b"b")`` followed by
``BUILD (1, shape, dtype("u1") + BUILD (3, "|", None, None, None, -1, -1, 0), fortran, raw bytes)``
(Python 3 writers add ``_codecs.encode(text, "latin1")`` for the bytes).

Pickles can run code and numpy's own reconstructors trust their input (an object-dtype
array over attacker bytes is a pointer dereference away from a crash), so:

* a pre-pass over the opcodes (:func:`check_opcodes`) allows only the opcodes this format
  uses, only the five globals below, and only memo indices in sequence, so nothing the
  stream declares can allocate more than the file holds;
* the globals resolve to poisonlab's own stand-ins, never to ``numpy.ndarray``,
  ``numpy.dtype`` or ``_reconstruct``: the stand-ins accept exactly a uint8 dtype and a
  shape whose product equals the raw bytes present, and the array is made here with
  ``numpy.frombuffer``.
"""
from __future__ import annotations

import io
import math
import pickle
import pickletools
from typing import Any

import numpy as np

from ..errors import PoisonlabError, one_line, shown

GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}
OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_LIST", "LIST",
    "APPEND", "APPENDS", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWTRUE", "NEWFALSE",
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING", "SHORT_BINSTRING",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET",
    "LONG_BINGET",
})
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
MAX_DIMS = 4
_DTYPE_STATE = (3, "|", None, None, None, -1, -1, 0)


def _not_a_batch(source: str, what: str) -> PoisonlabError:
    return PoisonlabError(
        f"{source}: refused {what}; a CIFAR-10 batch holds only uint8 numpy arrays, lists, ints and bytes, "
        "so this file is not a genuine batch (it may be malicious): delete it and use the official "
        "cifar-10-python.tar.gz"
    )


def check_opcodes(data: bytes, source: str) -> None:
    """Refuse opcodes, globals and memo indices a genuine batch does not have, without running anything."""
    puts = 0
    for op, arg, pos in pickletools.genops(data):
        name = op.name
        if name not in OPCODES:
            raise _not_a_batch(source, f"pickle opcode {name} at byte {pos}")
        if name == "PROTO" and not 0 <= arg <= pickle.HIGHEST_PROTOCOL:
            raise _not_a_batch(source, f"pickle protocol {arg}")
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            if (module, attr) not in GLOBALS and (_py3_name(module), attr) not in GLOBALS:
                raise _not_a_batch(source, f"to unpickle {one_line(module, 80)}.{one_line(attr, 80)}")
        elif name in _PUTS:
            if arg != puts:  # pickles number their memo in order; a jump would make the memo huge
                raise _not_a_batch(source, f"memo index {arg} at byte {pos} (expected {puts})")
            puts += 1
        elif name == "MEMOIZE":
            puts += 1
        elif name in _GETS and not 0 <= arg < puts:
            raise _not_a_batch(source, f"memo index {arg} at byte {pos} (only {puts} stored)")


def _py3_name(module: str) -> str:
    return {"__builtin__": "builtins"}.get(module, module)


class _Encode:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes; latin-1 text only."""

    __slots__ = ()  # nothing in the stream can set attributes on the stand-ins

    def __call__(self, text: Any, encoding: Any = "latin1") -> bytes:
        if encoding not in ("latin1", "latin-1", b"latin1") or not isinstance(text, str):
            raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {shown(encoding)}")
        return text.encode("latin1")


class _NdarrayToken:
    """Stands for ``numpy.ndarray``: only ever the first argument of ``_reconstruct``, never called."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("numpy.ndarray called directly")


_NDARRAY = _NdarrayToken()


class _Dtype:
    """Stands for ``numpy.dtype("u1")``; its pickled state must be exactly uint8's."""

    __slots__ = ("ok",)

    def __init__(self) -> None:
        self.ok = False

    def __setstate__(self, state: Any) -> None:
        if self.ok or not isinstance(state, tuple) or len(state) != len(_DTYPE_STATE):
            raise pickle.UnpicklingError(f"unexpected dtype state {shown(state)}")
        plain = tuple(s.decode("latin1") if isinstance(s, bytes) else s for s in state)
        if any(type(a) is not type(b) or a != b for a, b in zip(plain, _DTYPE_STATE)):
            raise pickle.UnpicklingError(f"unexpected dtype state {shown(state)}")
        self.ok = True


class _Array:
    """Stands for a uint8 ``numpy.ndarray`` until its state arrives; then holds the real array."""

    __slots__ = ("source", "array")

    def __init__(self, source: str) -> None:
        self.source = source
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None or not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("unexpected array state")
        version, shape, dtype, fortran, raw = state
        if version != 1 or not isinstance(dtype, _Dtype) or not dtype.ok or type(fortran) is not bool:
            raise _not_a_batch(self.source, f"an array that is not plain uint8 (dtype {shown(dtype)})")
        if (not isinstance(shape, tuple) or len(shape) > MAX_DIMS
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise _not_a_batch(self.source, f"an array of shape {shown(shape)}")
        if not isinstance(raw, bytes):
            raise _not_a_batch(self.source, f"array data of type {type(raw).__name__}")
        count = math.prod(shape)  # Python ints: no wrap-around
        if count != len(raw):
            raise PoisonlabError(f"{self.source}: an array declares shape {shown(shape)} ({count} bytes) but "
                                 f"holds {len(raw)} bytes; the file is corrupt or malicious, fetch it again")
        self.array = np.frombuffer(raw, dtype=np.uint8).reshape(shape, order="F" if fortran else "C")


class _Reconstruct:
    """Stands for ``numpy.core.multiarray._reconstruct``: accepts only ``(ndarray, (0,), b"b")``."""

    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, cls: Any, shape: Any, typecode: Any) -> _Array:
        if cls is not _NDARRAY or type(shape) is not tuple or shape != (0,) or typecode not in (b"b", "b"):
            raise _not_a_batch(self.source, "an array reconstructor with unexpected arguments")
        return _Array(self.source)


class _DtypeOf:
    """Stands for ``numpy.dtype``: accepts only ``("u1", False, True)``-like calls for uint8."""

    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, code: Any, align: Any = False, copy: Any = False) -> _Dtype:
        if code not in (b"u1", "u1") or type(align) is not bool or type(copy) is not bool:
            raise _not_a_batch(self.source, f"numpy dtype {shown(code)} (only uint8 'u1' is allowed)")
        return _Dtype()


_ENCODE = _Encode()


class BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: dicts, lists, bytes, ints and uint8 arrays, nothing else.

    ``find_class`` is the only way a pickle reaches a callable; it hands out stand-ins
    (see the module docstring) and refuses every other global (``os.system``,
    ``builtins.eval``...). Python-2 strings come back as bytes (``encoding="bytes"``), as
    in the official files. Use :func:`unpickle_batch`, which also runs :func:`check_opcodes`.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in GLOBALS:
            raise _not_a_batch(self.source, f"to unpickle {one_line(module, 80)}.{one_line(name, 80)}")
        if name == "_reconstruct":
            return _Reconstruct(self.source)
        return {"ndarray": _NDARRAY, "dtype": _DtypeOf(self.source), "encode": _ENCODE}[name]

    def persistent_load(self, pid: Any) -> Any:
        raise _not_a_batch(self.source, "a persistent id in the pickle")


def _finished(value: Any, source: str) -> Any:
    if isinstance(value, _Array):
        if value.array is None:
            raise PoisonlabError(f"{source}: an array without its data; the file is corrupt, fetch it again")
        return value.array
    return value


def unpickle_batch(data: bytes, source: str) -> dict[str, Any]:
    """A batch dict (keys decoded to str, arrays built) read with :class:`BatchUnpickler`."""
    try:
        check_opcodes(data, source)
        obj = BatchUnpickler(io.BytesIO(data), source).load()
    except PoisonlabError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside a corrupt pickle is "corrupt"
        reason = one_line(f"{type(e).__name__}: {e}", 200)
        raise PoisonlabError(f"{source}: corrupt pickle ({reason}); fetch the official files again") from e
    if not isinstance(obj, dict):
        raise PoisonlabError(f"{source}: expected a dict of arrays, found {type(obj).__name__}; not a CIFAR-10 batch")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = k.decode("latin1") if isinstance(k, bytes) else str(k)
        out[key] = _finished(v, source)
    return out
