"""Reading and writing Detectron ``.pkl`` weights files without trusting them.

Why this exists: ``pickle.load`` runs whatever callable a file names, so loading a downloaded
``.pkl`` with it is running downloaded code. Detectron files only ever hold dicts, strings and
NumPy arrays, so ``RestrictedUnpickler`` resolves exactly the handful of globals that NumPy
array / dtype / scalar pickles need (under both the NumPy 1.x ``numpy.core`` and the NumPy 2
``numpy._core`` spellings) and refuses every other one before anything is called.

Writing goes the other way: Detectron (Python 2, NumPy 1.x) must be able to load what we
write, so ``write_detectron_pkl`` emits the protocol-2 opcodes itself, the way Python 2's
``cPickle`` and NumPy 1.x's ``ndarray.__reduce__`` do (docs/detectron.md §1.1, §1.6): Python 2 ``str``
for keys and the cfg, ``numpy.core.multiarray._reconstruct`` + ``BUILD`` for every float32
C-contiguous array, ``cfg`` before ``blobs``. The result also loads in Python 3 with
``pickle.load(f, encoding='latin1')`` and with ``read_detectron_pkl``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import struct
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from convert.errors import ConvertError, UnsafePickleError, first_line
from detectron_parity.fileio import atomic_file

logger = logging.getLogger(__name__)

try:  # NumPy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # NumPy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 writes it for ``bytes`` in protocol 2 (latin1 only)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not a bytes literal")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as Python 3 writes an empty ``bytes`` in protocol 2; nothing else."""
    if args:
        raise pickle.UnpicklingError("bytes(...) with arguments is not a bytes literal")
    return b""


def _plain_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` restricted to numbers, booleans and byte strings: an object dtype would
    let array contents be arbitrary Python objects."""
    dtype = np.dtype(*args)
    if dtype.hasobject or dtype.kind not in "biufcSU":
        raise pickle.UnpicklingError(f"dtype {dtype} is not a plain numeric dtype")
    return dtype


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any] | type]:
    table: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
        ("_codecs", "encode"): _codecs_encode,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = _multiarray.scalar
        table[(f"{core}.numeric", "_frombuffer")] = _numeric._frombuffer
    return table


ALLOWED_GLOBALS = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, strings, numbers and NumPy arrays, and nothing else.

    ``find_class`` is the only way a pickle reaches a callable (GLOBAL, STACK_GLOBAL, INST,
    OBJ, EXT all go through it), so refusing there means no foreign code can run. Persistent
    ids are refused by the base class. Nothing is imported: allowed names map to objects.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"it references the Python object {module}.{name}, which a Detectron weights file "
                "never contains (only dicts, strings and NumPy arrays are allowed); nothing was executed"
            ) from None


def load_pickle(path: str | os.PathLike[str], encoding: str = "latin1") -> Any:
    """Unpickle ``path`` with ``RestrictedUnpickler``; Python 2 ``str`` are decoded with
    ``encoding`` (``"bytes"``: kept as ``bytes``).

    Raises ``ConvertError`` with a one-line message for a missing, empty, truncated, corrupt
    or hostile file.
    """
    name = os.fspath(path)
    try:
        f = open(name, "rb")
    except OSError as e:
        raise ConvertError(f"cannot read {name}: {e.strerror or e}") from None
    with f:
        if not f.read(1):
            raise ConvertError(f"{name} is empty, not a pickle")
        f.seek(0)
        try:
            return RestrictedUnpickler(f, encoding=encoding).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"refusing to load {name}: {e}") from None
        except EOFError:
            raise ConvertError(f"{name} is truncated: the pickle ends before its STOP opcode") from None
        except Exception as e:  # whatever else goes wrong, the file is corrupt
            detail = first_line(e, type(e).__name__)
            if "truncated" in detail:
                raise ConvertError(f"{name} is truncated: {detail}") from None
            raise ConvertError(f"{name} is not a valid Detectron pickle ({type(e).__name__}: {detail})") from None


def pickle_protocol(path: str | os.PathLike[str]) -> int:
    """The protocol a pickle file declares (0 when it has no PROTO opcode)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head[1] if len(head) == 2 and head[0] == 0x80 else 0


@dataclass
class DetectronPkl:
    """The content of a Detectron weights file.

    ``blobs`` maps blob name to array (``None`` entries dropped as Detectron does);
    ``cfg_yaml`` is the embedded config (``None`` for flat files such as ImageNet
    ``R-50.pkl``); ``wrapped`` tells a ``{'blobs', 'cfg'}`` file from a flat name -> array dict.
    """

    blobs: dict[str, np.ndarray]
    cfg_yaml: str | None
    wrapped: bool

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{blob name: shape}``, what ``convert.kinds.detect_kind`` and blob matching read."""
        return {name: array.shape for name, array in self.blobs.items()}


def _as_text(value: Any, what: str, source: str) -> str:
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, str):
        return value
    raise ConvertError(f"{source}: {what} is a {type(value).__name__}, not a string")


def read_detectron_pkl(path: str | os.PathLike[str]) -> DetectronPkl:
    """Load and validate a Detectron ``.pkl``: ``{'blobs': {...}, 'cfg': str}`` or a flat dict.

    Python 2 ``str`` are read as ``bytes``: an array's data then reaches NumPy as it is in the
    file, instead of being decoded to a latin1 ``str`` and encoded back (two copies of every
    array, about a third of ``pickle.load(encoding='latin1')``'s time); the names and the cfg
    are decoded as latin1 here, which gives the same text.
    """
    name = os.fspath(path)
    top = load_pickle(path, encoding="bytes")
    if not isinstance(top, dict):
        raise ConvertError(f"{name} holds a pickled {type(top).__name__}, not a Detectron weights dict")
    top = {_as_text(k, "a top-level key", name): v for k, v in top.items()}
    wrapped = "blobs" in top
    cfg_yaml = None
    if wrapped:
        others = sorted(set(top) - {"blobs", "cfg"})
        if others:
            logger.warning("%s: ignoring top-level keys other than 'blobs' and 'cfg': %s", name, others)
        if top.get("cfg") is not None:
            cfg_yaml = _as_text(top["cfg"], "'cfg'", name)
        raw = top["blobs"]
        if not isinstance(raw, dict):
            raise ConvertError(f"{name}: 'blobs' is a {type(raw).__name__}, not a dict of arrays")
    else:
        raw = top
    blobs: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        blob = _as_text(key, "a blob name", name)
        if value is None:
            continue
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            what = f"array of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
            raise ConvertError(f"{name}: blob {blob!r} is a {what}, not a numeric array")
        blobs[blob] = value
    if not blobs:
        raise ConvertError(f"{name} holds no arrays: not a Detectron weights file")
    return DetectronPkl(blobs=blobs, cfg_yaml=cfg_yaml, wrapped=wrapped)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """``detectron_parity.fileio.atomic_file`` (no partial output, ever) with an unwritable location
    reported as a ``ConvertError``."""
    try:
        with atomic_file(path) as f:
            yield f
    except OSError as e:
        raise ConvertError(f"cannot write {os.fspath(path)}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# Python 2 / NumPy 1.x compatible protocol-2 writer
# ---------------------------------------------------------------------------------------------
_SETITEMS_BATCH = 1000  # Python 2's pickle batches dict items by 1000


class _Py2Pickler:
    """Emits protocol-2 opcodes for exactly the objects a Detectron weights file holds."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.memo: dict[tuple[str, ...], int] = {}

    def _memoized(self, key: tuple[str, ...]) -> bool:
        """Write a GET and return True if ``key`` is in the memo, else remember it with a PUT."""
        if key in self.memo:
            i = self.memo[key]
            self.f.write(pickle.BINGET + bytes([i]) if i < 256 else pickle.LONG_BINGET + struct.pack("<I", i))
            return True
        return False

    def _put(self, key: tuple[str, ...]) -> None:
        i = self.memo[key] = len(self.memo) + 1  # Python 2's cPickle numbers memo entries from 1
        self.f.write(pickle.BINPUT + bytes([i]) if i < 256 else pickle.LONG_BINPUT + struct.pack("<I", i))

    def global_(self, module: str, name: str) -> None:
        key = ("global", module, name)
        if not self._memoized(key):
            self.f.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
            self._put(key)

    def py2_str(self, data: bytes | memoryview) -> None:
        """A Python 2 ``str`` (also how NumPy 1.x stores array data): SHORT_BINSTRING / BINSTRING."""
        if len(data) < 256:
            self.f.write(pickle.SHORT_BINSTRING + bytes([len(data)]))
        else:
            self.f.write(pickle.BINSTRING + struct.pack("<i", len(data)))
        self.f.write(data)

    def text(self, text: str, unicode: bool = False) -> None:
        """A Python 2 ``str`` if ASCII and not asked for ``unicode``, else a ``unicode``."""
        if not unicode and text.isascii():
            self.py2_str(text.encode("ascii"))
        else:
            data = text.encode("utf-8")
            self.f.write(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

    def int_(self, n: int) -> None:
        if 0 <= n < 256:
            self.f.write(pickle.BININT1 + bytes([n]))
        elif 0 <= n < 65536:
            self.f.write(pickle.BININT2 + struct.pack("<H", n))
        else:
            self.f.write(pickle.BININT + struct.pack("<i", n))

    def list_(self, items: Sequence[Any], write: Callable[[Any], None]) -> None:
        """A list as Python 2 pickles it: EMPTY_LIST, then APPEND(S) in batches of 1000."""
        self.f.write(pickle.EMPTY_LIST)
        for start in range(0, len(items), _SETITEMS_BATCH):
            batch = items[start:start + _SETITEMS_BATCH]
            if len(batch) > 1:
                self.f.write(pickle.MARK)
            for item in batch:
                write(item)
            self.f.write(pickle.APPENDS if len(batch) > 1 else pickle.APPEND)

    def int_tuple(self, items: tuple[int, ...]) -> None:
        if not items:
            self.f.write(pickle.EMPTY_TUPLE)
            return
        if len(items) > 3:
            self.f.write(pickle.MARK)
        for n in items:
            self.int_(n)
        self.f.write({1: pickle.TUPLE1, 2: pickle.TUPLE2, 3: pickle.TUPLE3}.get(len(items), pickle.TUPLE))

    def float32_dtype(self) -> None:
        """``dtype('float32')`` as NumPy 1.x reduces it: ``dtype('f4', 0, 1)`` + BUILD state."""
        if self._memoized(("dtype", "f4")):
            return
        self.global_("numpy", "dtype")
        self.py2_str(b"f4")
        self.int_(0)
        self.int_(1)
        self.f.write(pickle.TUPLE3 + pickle.REDUCE)
        self._put(("dtype", "f4"))
        # state (version 3, byte order, subarray, names, fields, elsize, alignment, flags)
        self.f.write(pickle.MARK)
        self.int_(3)
        self.py2_str(b"<")
        self.f.write(pickle.NONE * 3)
        self.int_(-1)
        self.int_(-1)
        self.int_(0)
        self.f.write(pickle.TUPLE + pickle.BUILD)

    def ndarray(self, array: np.ndarray) -> None:
        """``_reconstruct(ndarray, (0,), 'b')`` + BUILD ``(1, shape, dtype, False, raw bytes)``."""
        self.global_("numpy.core.multiarray", "_reconstruct")
        self.global_("numpy", "ndarray")
        self.int_tuple((0,))
        self.py2_str(b"b")
        self.f.write(pickle.TUPLE3 + pickle.REDUCE)
        self.f.write(pickle.MARK)
        self.int_(1)
        self.int_tuple(tuple(int(d) for d in array.shape))
        self.float32_dtype()
        self.f.write(pickle.NEWFALSE)
        self.py2_str(memoryview(array.reshape(-1).view(np.uint8)))
        self.f.write(pickle.TUPLE + pickle.BUILD)

    def blob_dict(self, blobs: Mapping[str, np.ndarray], unicode_keys: Collection[str]) -> None:
        self.f.write(pickle.EMPTY_DICT)
        items = list(blobs.items())
        for start in range(0, len(items), _SETITEMS_BATCH):
            batch = items[start:start + _SETITEMS_BATCH]
            if len(batch) > 1:
                self.f.write(pickle.MARK)
            for key, array in batch:
                self.text(key, unicode=key in unicode_keys)
                self.ndarray(array)
            self.f.write(pickle.SETITEMS if len(batch) > 1 else pickle.SETITEM)


def _checked_float32(name: str, array: Any) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        what = f"{array.dtype} array" if isinstance(array, np.ndarray) else type(array).__name__
        raise TypeError(f"blob {name!r} is a {what}; Detectron weights files hold float32 arrays")
    if array.nbytes >= 2**31:
        raise ValueError(f"blob {name!r} has {array.nbytes} bytes, more than a Python 2 str can hold")
    return array if array.flags.c_contiguous else array.copy(order="C")


def write_detectron_pkl(
    path: str | os.PathLike[str],
    blobs: Mapping[str, np.ndarray],
    cfg_yaml: str | None,
    unicode_keys: Collection[str] = (),
) -> None:
    """Write a weights file that Python 2 Detectron loads: ``{'cfg': cfg_yaml, 'blobs': blobs}``.

    With ``cfg_yaml=None`` the file is a flat ``{name: array}`` dict like the ImageNet
    ``R-50.pkl``. Keys are Python 2 ``str`` except those in ``unicode_keys`` (Detectron wrote
    ``*_momentum`` and preserved blobs as ``unicode``). Arrays must be float32. The file
    appears atomically (no partial file on failure).
    """
    checked = {name: _checked_float32(name, array) for name, array in blobs.items()}
    with atomic_write(path) as f:
        writer = _Py2Pickler(f)
        f.write(pickle.PROTO + bytes([2]))
        if cfg_yaml is None:
            writer.blob_dict(checked, unicode_keys)
        else:
            f.write(pickle.EMPTY_DICT + pickle.MARK)
            writer.text("cfg")
            writer.text(cfg_yaml)
            writer.text("blobs")
            writer.blob_dict(checked, unicode_keys)
            f.write(pickle.SETITEMS)
        f.write(pickle.STOP)
    logger.info("wrote %s (%d blobs)", os.fspath(path), len(checked))


def write_proposals_pkl(path: str | os.PathLike[str], boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                        ids: Sequence[int], cfg_yaml: str) -> None:
    """Write a proposals file as Detectron's ``save_object(dict(boxes=, scores=, ids=, cfg=))``
    does: lists of float32 arrays, a list of int ids and the cfg YAML; atomically."""
    for name, arrays in (("boxes", boxes), ("scores", scores)):
        for i, array in enumerate(arrays):
            _checked_float32(f"{name}[{i}]", array)
    bad = [i for i in ids if not -2**31 <= i < 2**31]
    if bad:
        raise ValueError(f"image id {bad[0]} does not fit a pickle BININT")
    with atomic_write(path) as f:
        writer = _Py2Pickler(f)
        f.write(pickle.PROTO + bytes([2]) + pickle.EMPTY_DICT + pickle.MARK)
        writer.text("boxes")
        writer.list_(list(boxes), writer.ndarray)
        writer.text("scores")
        writer.list_(list(scores), writer.ndarray)
        writer.text("ids")
        writer.list_(list(ids), writer.int_)
        writer.text("cfg")
        writer.text(cfg_yaml)
        f.write(pickle.SETITEMS + pickle.STOP)
    logger.info("wrote %s (proposals of %d images)", os.fspath(path), len(ids))
