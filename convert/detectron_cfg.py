"""The config YAML embedded in Detectron weights files: read it safely, write it like Detectron.

Why this exists: Detectron stored ``yaml.dump(cfg)`` of its ``AttrDict`` config, which PyYAML
writes with Python tags (docs/detectron.md §1.3, §1.6): ``!!python/object/new:...AttrDict`` with a
``dictitems`` (and, from 2018 on, a ``state``) block, ``!!python/tuple``,
``!!python/unicode``, NumPy scalars and arrays as ``!!python/object/apply:`` calls with
``!!binary`` data and a shared dtype anchor. ``yaml.safe_load`` refuses those tags and
``yaml.load`` would execute them; ``parse_detectron_cfg`` rebuilds the values from the tags'
data without importing or calling anything named in the file.

``dump_detectron_cfg`` writes one of our configs the way Python 2 PyYAML 3.12 wrote
Detectron's, so files we produce look like (and load in) Detectron, and tests can exercise
the reader on realistic text.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from convert.errors import CfgMismatchError, ConvertError
from rcnn.config import CfgNode, get_default_cfg

_TAG = "tag:yaml.org,2002:"
_ATTRDICT = {
    "2017": "utils.collections.AttrDict",  # the December 2017 code of the 12_2017 model zoo
    "2018": "detectron.utils.collections.AttrDict",  # code from spring 2018 on
}
_RECONSTRUCT = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
_SCALAR = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
_DTYPE = "numpy.dtype"
_NDARRAY_NAME = "numpy.ndarray"
_SIMPLE_DTYPE = re.compile(r"^[biuf][1248]$")

# Config keys that Detectron keeps as NumPy float64 values rather than Python types.
_NUMPY_ARRAY_KEYS = frozenset({"PIXEL_MEANS"})
_NUMPY_SCALAR_KEYS = frozenset({"BBOX_XFORM_CLIP"})


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
class _PyName(str):
    """The target of a ``!!python/name:`` tag, kept as text (never imported)."""


class _DetectronCfgLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML plus the Python tags Detectron's cfg dumps contain, rebuilt as plain data.

    On libyaml's parser where PyYAML has it (the same events; the constructors are these
    Python ones): the pure-Python parser took ~0.2 s of a full-size file's conversion."""


def _fail(node: yaml.Node, problem: str) -> yaml.constructor.ConstructorError:
    return yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


def _args_and_state(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[list[Any], Any]:
    """PyYAML writes ``f(*args)`` as a sequence, and as ``{args, state, ...}`` when it has a state."""
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True), None
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
        return list(value.get("args", [])), value.get("state")
    return [], None


def _construct_object(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    """``!!python/object[/new]:...AttrDict`` -> the dict of its ``dictitems`` (state dropped)."""
    if suffix not in _ATTRDICT.values():
        raise _fail(node, f"unsupported Python object {suffix!r} (only Detectron's AttrDict is expected)")
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
        items = value.get("dictitems", {})
        if not isinstance(items, dict):
            raise _fail(node, f"{suffix} dictitems is not a mapping")
        return dict(items)
    return {}


def _raw_bytes(node: yaml.Node, data: Any) -> bytes:
    """Array/scalar data: ``!!binary`` gives bytes; Python 2 wrote ASCII or UTF-8 data as text."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    raise _fail(node, f"NumPy data is a {type(data).__name__}, not bytes")


def _checked_dtype(node: yaml.Node, value: Any) -> np.dtype:
    if not isinstance(value, np.dtype):
        raise _fail(node, f"expected a NumPy dtype, got {type(value).__name__}")
    return value


def _construct_apply(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    """NumPy ``dtype(...)``, ``scalar(dtype, data)`` and ``_reconstruct`` + array state, decoded."""
    args, state = _args_and_state(loader, node)
    if suffix == _DTYPE:
        if not args or not isinstance(args[0], str) or not _SIMPLE_DTYPE.match(args[0]):
            raise _fail(node, f"unsupported NumPy dtype arguments {args!r}")
        dtype = np.dtype(args[0])
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            dtype = dtype.newbyteorder(state[1])
        return dtype
    if suffix in _SCALAR:
        if len(args) != 2:
            raise _fail(node, "a NumPy scalar needs (dtype, data)")
        dtype = _checked_dtype(node, args[0])
        data = _raw_bytes(node, args[1])
        if len(data) != dtype.itemsize:
            raise _fail(node, f"a {dtype} scalar needs {dtype.itemsize} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype)[0]
    if suffix in _RECONSTRUCT:
        if not args or args[0] != _NDARRAY_NAME or not isinstance(state, tuple) or len(state) != 5:
            raise _fail(node, "unsupported NumPy array reconstruction")
        _version, shape, dtype, fortran, data = state
        dtype = _checked_dtype(node, dtype)
        data = _raw_bytes(node, data)
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _fail(node, f"bad NumPy array shape {shape!r}")
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise _fail(node, f"a {dtype} array of shape {shape} needs {math.prod(shape) * dtype.itemsize} "
                              f"bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()
    raise _fail(node, f"unsupported Python call {suffix!r} (only NumPy dtypes, scalars and arrays are expected)")


def _construct_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return loader.construct_scalar(node)


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[Any, ...]:
    return tuple(loader.construct_sequence(node, deep=True))


def _construct_name(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _PyName:
    return _PyName(suffix)


_DetectronCfgLoader.add_multi_constructor(_TAG + "python/object/new:", _construct_object)
_DetectronCfgLoader.add_multi_constructor(_TAG + "python/object:", _construct_object)
_DetectronCfgLoader.add_multi_constructor(_TAG + "python/object/apply:", _construct_apply)
_DetectronCfgLoader.add_multi_constructor(_TAG + "python/name:", _construct_name)
_DetectronCfgLoader.add_constructor(_TAG + "python/tuple", _construct_tuple)
_DetectronCfgLoader.add_constructor(_TAG + "python/unicode", _construct_text)
_DetectronCfgLoader.add_constructor(_TAG + "python/str", _construct_text)


def parse_detectron_cfg(text: str, source: str = "<cfg>") -> dict[str, Any]:
    """The config in a Detectron weights file as nested dicts (AttrDicts become dicts, tuples
    stay tuples, ``PIXEL_MEANS`` is a NumPy array, ``BBOX_XFORM_CLIP`` a NumPy scalar).

    Nothing named in the text is imported or called; unknown Python tags are a ``ConvertError``.
    """
    try:
        data = yaml.load(text, Loader=_DetectronCfgLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConvertError(f"{source}: the embedded cfg YAML cannot be read{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{source}: the embedded cfg is a {type(data).__name__}, not a config mapping")
    return data


# ---------------------------------------------------------------------------------------------
# Cross-check
# ---------------------------------------------------------------------------------------------
def _saved(saved: Mapping[str, Any], key: str, default: Any) -> Any:
    node: Any = saved
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def cfg_disagreements(saved: Mapping[str, Any], cfg: CfgNode) -> list[str]:
    """Where the cfg saved in a weights file and ``cfg`` disagree on what the weights mean.

    Checked: MODEL.NUM_CLASSES, MODEL.BBOX_REG_WEIGHTS (Detectron uses (1, 1, 1, 1) for files
    whose cfg lacks it), MODEL.MASK_ON, MODEL.KEYPOINTS_ON (absent means False).
    """
    out = []
    num_classes = _saved(saved, "MODEL.NUM_CLASSES", None)
    if num_classes is not None and int(num_classes) != cfg.MODEL.NUM_CLASSES:
        out.append(f"MODEL.NUM_CLASSES is {num_classes} in the file, {cfg.MODEL.NUM_CLASSES} in the config")
    weights = _saved(saved, "MODEL.BBOX_REG_WEIGHTS", (1.0, 1.0, 1.0, 1.0))
    if tuple(float(w) for w in weights) != tuple(float(w) for w in cfg.MODEL.BBOX_REG_WEIGHTS):
        out.append(f"MODEL.BBOX_REG_WEIGHTS is {tuple(float(w) for w in weights)} in the file, "
                   f"{tuple(cfg.MODEL.BBOX_REG_WEIGHTS)} in the config")
    for key in ("MASK_ON", "KEYPOINTS_ON"):
        value = bool(_saved(saved, f"MODEL.{key}", False))
        if value != bool(cfg.MODEL[key]):
            out.append(f"MODEL.{key} is {value} in the file, {bool(cfg.MODEL[key])} in the config")
    return out


def check_detectron_cfg(cfg_yaml: str, cfg: CfgNode, source: str) -> None:
    """Raise ``CfgMismatchError`` (one line, every disagreement) if the file's cfg contradicts ``cfg``."""
    problems = cfg_disagreements(parse_detectron_cfg(cfg_yaml, source), cfg)
    if problems:
        raise CfgMismatchError(f"{source}: its embedded cfg disagrees with the config: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
class _AttrDict(dict):
    """A Detectron ``AttrDict`` to be written, with its ``__dict__`` state (2018 style)."""

    def __init__(self, items: Mapping[str, Any], module: str, state: dict[Any, Any] | None) -> None:
        super().__init__(items)
        self.module = module
        self.state = state


class _Py2Str(bytes):
    """A Python 2 ``str`` (bytes), written the way PyYAML 3.12 wrote one under Python 2."""


class _Py2Unicode(str):
    """A Python 2 ``unicode`` (Detectron's defaults under ``unicode_literals``): ``!!python/unicode``."""


class _NdarrayName:
    """``!!python/name:numpy.ndarray ''``, the class argument of ``_reconstruct``."""


class _DetectronDumper(yaml.SafeDumper):
    """PyYAML's Python 2 representation of Detectron's config objects."""

    def ignore_aliases(self, data: Any) -> bool:
        # Only the float64 dtype is shared (PIXEL_MEANS and BBOX_XFORM_CLIP): the &id001 anchor.
        return not isinstance(data, np.dtype)


def _represent_attrdict(dumper: yaml.SafeDumper, data: _AttrDict) -> yaml.Node:
    tag = f"{_TAG}python/object/new:{data.module}"
    if not data and not data.state:
        return dumper.represent_sequence(tag, [])
    value: dict[str, Any] = {"dictitems": dict(data)}
    if data.state:
        value["state"] = data.state
    return dumper.represent_mapping(tag, value)


def _represent_py2_str(dumper: yaml.SafeDumper, data: bytes) -> yaml.Node:
    """ASCII as a plain string, UTF-8 as ``!!python/str``, anything else as ``!!binary``."""
    try:
        return dumper.represent_scalar(_TAG + "str", data.decode("ascii"))
    except UnicodeDecodeError:
        pass
    try:
        return dumper.represent_scalar(_TAG + "python/str", data.decode("utf-8"))
    except UnicodeDecodeError:
        return dumper.represent_binary(bytes(data))


def _represent_py2_unicode(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    return dumper.represent_scalar(_TAG + ("python/unicode" if data.isascii() else "str"), str(data))


def _represent_tuple(dumper: yaml.SafeDumper, data: tuple[Any, ...]) -> yaml.Node:
    return dumper.represent_sequence(_TAG + "python/tuple", data)


def _represent_dtype(dumper: yaml.SafeDumper, data: np.dtype) -> yaml.Node:
    # NumPy 1.x: dtype('f8', 0, 1) with state (3, byte order, None, None, None, -1, -1, 0)
    state = (3, _Py2Str(data.byteorder.replace("=", "<").encode()), None, None, None, -1, -1, 0)
    value = {"args": [_Py2Str(data.str[1:].encode()), 0, 1], "state": state}
    return dumper.represent_mapping(f"{_TAG}python/object/apply:{_DTYPE}", value)


def _represent_ndarray(dumper: yaml.SafeDumper, data: np.ndarray) -> yaml.Node:
    state = (1, tuple(int(d) for d in data.shape), data.dtype, False, _Py2Str(np.ascontiguousarray(data).tobytes()))
    value = {"args": [_NdarrayName(), (0,), _Py2Str(b"b")], "state": state}
    return dumper.represent_mapping(f"{_TAG}python/object/apply:{_RECONSTRUCT[0]}", value)


def _represent_float64(dumper: yaml.SafeDumper, data: np.float64) -> yaml.Node:
    return dumper.represent_sequence(f"{_TAG}python/object/apply:{_SCALAR[0]}", [data.dtype, _Py2Str(data.tobytes())])


def _represent_ndarray_name(dumper: yaml.SafeDumper, data: _NdarrayName) -> yaml.Node:
    return dumper.represent_scalar(f"{_TAG}python/name:{_NDARRAY_NAME}", "")


_DetectronDumper.add_representer(_AttrDict, _represent_attrdict)
_DetectronDumper.add_representer(_Py2Str, _represent_py2_str)
_DetectronDumper.add_representer(_Py2Unicode, _represent_py2_unicode)
_DetectronDumper.add_representer(tuple, _represent_tuple)
_DetectronDumper.add_multi_representer(np.dtype, _represent_dtype)
_DetectronDumper.add_representer(np.ndarray, _represent_ndarray)
_DetectronDumper.add_representer(np.float64, _represent_float64)
_DetectronDumper.add_representer(_NdarrayName, _represent_ndarray_name)


def _to_detectron(value: Any, default: Any, key: str, style: str, dtype: np.dtype) -> Any:
    """One config value as the Python 2 object Detectron held for it."""
    if isinstance(value, CfgNode):
        items = {k: _to_detectron(v, default.get(k) if isinstance(default, Mapping) else None,
                                  k, style, dtype) for k, v in value.items()}
        state = {_Py2Unicode("__immutable__"): True} if style == "2018" else None
        return _AttrDict(items, _ATTRDICT[style], state)
    if key in _NUMPY_ARRAY_KEYS:
        return np.array(value, dtype=dtype)
    if key in _NUMPY_SCALAR_KEYS:
        return dtype.type(value)
    if isinstance(value, str):
        # Detectron's 2018+ defaults are unicode literals; YAML-set values are Python 2 str.
        return _Py2Unicode(value) if style == "2018" and value == default else _Py2Str(value.encode("utf-8"))
    if isinstance(value, (tuple, list)):
        items = [_to_detectron(v, None, "", style, dtype) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def dump_detectron_cfg(cfg: CfgNode, style: str = "2017") -> str:
    """``cfg`` as the YAML text Detectron (Python 2, PyYAML 3.12, NumPy 1.x) stored in its files.

    ``style='2017'``: ``utils.collections.AttrDict``, no ``state`` blocks, plain strings (the
    12_2017 model zoo); ``style='2018'``: ``detectron.utils.collections.AttrDict`` with
    ``state: {__immutable__: true}`` and ``!!python/unicode`` for strings still equal to
    Detectron's default.
    """
    if style not in _ATTRDICT:
        raise ValueError(f"style must be one of {sorted(_ATTRDICT)}, not {style!r}")
    data = _to_detectron(cfg, get_default_cfg(), "", style, np.dtype(np.float64))
    return yaml.dump(data, Dumper=_DetectronDumper, default_flow_style=None, allow_unicode=False, width=80)
