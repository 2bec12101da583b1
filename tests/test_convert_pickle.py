"""convert.pickle_io: the restricted unpickler refuses everything but Detectron's content, and
the protocol-2 writer produces what Python 2 + NumPy 1.x Detectron reads."""
from __future__ import annotations

import builtins
import errno
import io
import os
import pickle
import pickletools
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from convert import pickle_io
from convert.errors import ConvertError, UnsafePickleError
from convert.pickle_io import load_pickle, read_detectron_pkl, write_detectron_pkl

# Written by Python 2.7.18 + NumPy 1.16.6 with cPickle protocol 2 (what Detectron's
# save_object did): {'cfg': 'A: 1\n', 'blobs': {'conv1_w': arange(6).reshape(2, 3),
# u'conv1_w_momentum': 2 * conv1_w, 'b2': conv1_w[0]}} (all float32).
PY2_DETECTRON_PICKLE = (
    b"\x80\x02}q\x01(U\x03cfgq\x02U\x05A: 1\nq\x03U\x05blobsq\x04}q\x05(X\x10\x00\x00\x00conv1_w_momentumq\x06"
    b"cnumpy.core.multiarray\n_reconstruct\nq\x07cnumpy\nndarray\nq\x08K\x00\x85U\x01b\x87Rq\t(K\x01K\x02K\x03"
    b"\x86cnumpy\ndtype\nq\nU\x02f4K\x00K\x01\x87Rq\x0b(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    b"\x89U\x18\x00\x00\x00\x00\x00\x00\x00@\x00\x00\x80@\x00\x00\xc0@\x00\x00\x00A\x00\x00 AtbU\x02b2q\x0ch\x07"
    b"h\x08K\x00\x85U\x01b\x87Rq\r(K\x01K\x03\x85h\x0b\x89U\x0c\x00\x00\x00\x00\x00\x00\x80?\x00\x00\x00@tbU\x07"
    b"conv1_wq\x0eh\x07h\x08K\x00\x85U\x01b\x87Rq\x0f(K\x01K\x02K\x03\x86h\x0b\x89U\x18\x00\x00\x00\x00\x00\x00"
    b"\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@\x00\x00\xa0@tbuu."
)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# Reading what Detectron and Python 3 write
# ---------------------------------------------------------------------------------------------
def test_reads_a_real_python2_detectron_pickle(tmp_path):
    pkl = read_detectron_pkl(_write(tmp_path / "py2.pkl", PY2_DETECTRON_PICKLE))
    conv1 = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert pkl.wrapped and pkl.cfg_yaml == "A: 1\n"
    assert sorted(pkl.blobs) == ["b2", "conv1_w", "conv1_w_momentum"]  # str and unicode keys alike
    assert pkl.blobs["conv1_w"].dtype == np.float32
    np.testing.assert_array_equal(pkl.blobs["conv1_w"], conv1)
    np.testing.assert_array_equal(pkl.blobs["conv1_w_momentum"], 2 * conv1)
    np.testing.assert_array_equal(pkl.blobs["b2"], conv1[0])


def test_python2_str_is_latin1_text_as_plain_pickle_load_gives_it(tmp_path):
    # read_detectron_pkl reads Python 2 str as bytes (no decode/encode of the array data) and
    # decodes names and cfg itself: non-ASCII bytes must give pickle.load(encoding='latin1')'s text.
    data = PY2_DETECTRON_PICKLE.replace(b"U\x05A: 1\n", b"U\x05A: \xe9\n").replace(b"U\x02b2", b"U\x02\xff2")
    plain = pickle.loads(data, encoding="latin1")
    pkl = read_detectron_pkl(_write(tmp_path / "py2.pkl", data))
    assert pkl.cfg_yaml == plain["cfg"] == "A: \xe9\n"
    assert list(pkl.blobs) == list(plain["blobs"]) and "\xff2" in pkl.blobs
    for name, array in plain["blobs"].items():
        assert pkl.blobs[name].dtype == array.dtype and pkl.blobs[name].tobytes() == array.tobytes()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_reads_python3_pickles_of_every_protocol(tmp_path, protocol):
    # NumPy 2 writes numpy._core names; protocol 5 uses numeric._frombuffer; bytes keys and an
    # empty bytes value go through _codecs.encode / bytes() in protocols < 3.
    arrays = {b"conv1_w": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 2, 2),
              "fc6_b": np.arange(3, dtype=np.float64), "empty": np.zeros((0, 4), np.float32), "gone": None}
    path = tmp_path / "py3.pkl"
    path.write_bytes(pickle.dumps({b"blobs": arrays, "cfg": b"MODEL: {}\n"}, protocol=protocol))
    pkl = read_detectron_pkl(path)
    assert set(pkl.blobs) == {"conv1_w", "fc6_b", "empty"} and pkl.cfg_yaml == "MODEL: {}\n"
    for name, array in arrays.items():
        if array is not None:
            key = name.decode() if isinstance(name, bytes) else name
            assert pkl.blobs[key].dtype == array.dtype and np.array_equal(pkl.blobs[key], array)


def test_flat_imagenet_style_dict(tmp_path):
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"conv1_w": np.ones((2, 3), np.float32)}, protocol=2))
    pkl = read_detectron_pkl(path)
    assert not pkl.wrapped and pkl.cfg_yaml is None and list(pkl.blobs) == ["conv1_w"]


@pytest.mark.parametrize("content, message", [
    ([1, 2], "holds a pickled list"),
    ({"blobs": [np.zeros(2)]}, "'blobs' is a list"),
    ({"blobs": {"conv1_w": "text"}}, "blob 'conv1_w' is a str"),
    # numpy.dtype is allowed only for plain numeric dtypes: object arrays could carry any object.
    ({"blobs": {"conv1_w": np.array([1, "a"], dtype=object)}}, "not a plain numeric dtype"),
    ({"blobs": {}}, "holds no arrays"),
    ({"blobs": {"a": np.zeros(1)}, "cfg": 3}, "'cfg' is a int"),
])
def test_structurally_wrong_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ConvertError, match=message):
        read_detectron_pkl(path)


# ---------------------------------------------------------------------------------------------
# Hostile pickles: refused, and nothing runs
# ---------------------------------------------------------------------------------------------
class _Payload:
    """Pickles as a call of ``func(*args)``, the way an attacker's file would."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    touch = f"touch '{marker}'"
    return {
        "os.system": _Payload(os.system, touch),
        "builtins.eval": _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
        "numpy.load": _Payload(np.load, str(marker)),
    }


def _hostile_pickles(marker):
    """(name, bytes) of pickles that would touch ``marker`` if they were executed."""
    out = []
    for name, payload in _payloads(marker).items():
        for protocol in (0, 2, 4, 5):  # GLOBAL (0, 2) and STACK_GLOBAL (4, 5)
            out.append((f"{name}-top-p{protocol}", pickle.dumps(payload, protocol=protocol)))
            nested = {"cfg": "A: 1\n", "blobs": {"conv1_w": np.zeros(2, np.float32), "fc6_w": (1, [payload])}}
            out.append((f"{name}-nested-p{protocol}", pickle.dumps(nested, protocol=protocol)))
    touch = f"touch '{marker}'".encode()
    out += [
        # hand-written GLOBAL + REDUCE for os.system and posix.system, inside a blob dict
        ("GLOBAL-os.system", b"\x80\x02}(U\x05blobs}(U\x07conv1_wcos\nsystem\n(U" + bytes([len(touch)]) + touch
         + b"tRuu."),
        ("GLOBAL-posix.system", b"\x80\x02cposix\nsystem\nU" + bytes([len(touch)]) + touch + b"\x85R."),
        # protocol 0 INST opcode, which also resolves a global
        ("INST-os.system", b"(S'" + touch + b"'\nios\nsystem\n."),
        # STACK_GLOBAL by hand
        ("STACK_GLOBAL-builtins.eval", b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c"
         + bytes([len(f"open({str(marker)!r}, 'w').close()")]) + f"open({str(marker)!r}, 'w').close()".encode()
         + b"\x85R."),
    ]
    return out


def test_the_payloads_are_live(tmp_path):
    """Plain pickle.loads does run them: the marker test below is not vacuous."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_payloads(marker)["os.system"], protocol=2))
    assert marker.exists()


def test_hostile_pickles_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    cases = _hostile_pickles(marker)
    assert len(cases) == 44
    for name, data in cases:
        path = _write(tmp_path / f"{name}.pkl", data)
        with pytest.raises(UnsafePickleError, match="refusing to load .* never contains") as info:
            read_detectron_pkl(path)
        assert "\n" not in str(info.value), name
        assert not marker.exists(), f"{name} executed code"


def test_allowed_callables_cannot_be_misused():
    # _codecs.encode only as the latin1 bytes literal; bytes() only empty (no huge allocation).
    latin1_bytes = pickle.dumps(b"\xff\x00", protocol=2)
    assert b"_codecs" in latin1_bytes
    assert pickle_io.RestrictedUnpickler(io.BytesIO(latin1_bytes)).load() == b"\xff\x00"
    rot13 = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(pickle.UnpicklingError, match="not a bytes literal"):
        pickle_io.RestrictedUnpickler(io.BytesIO(rot13)).load()
    big = b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R."
    with pytest.raises(pickle.UnpicklingError, match="not a bytes literal"):
        pickle_io.RestrictedUnpickler(io.BytesIO(big)).load()


def test_persistent_ids_are_refused(tmp_path):
    path = _write(tmp_path / "pid.pkl", b"\x80\x02U\x03abcQ.")
    with pytest.raises(ConvertError, match="not a valid Detectron pickle"):
        load_pickle(path)


# ---------------------------------------------------------------------------------------------
# Broken files fail cleanly, with one line
# ---------------------------------------------------------------------------------------------
def test_truncated_pickles_fail_cleanly(tmp_path):
    data = PY2_DETECTRON_PICKLE
    for cut in sorted({1, 2, 5, 30, 60, 100, 150, 200, 250, 300, len(data) - 2, len(data) - 1}):
        path = _write(tmp_path / f"cut{cut}.pkl", data[:cut])
        with pytest.raises(ConvertError) as info:
            read_detectron_pkl(path)
        assert not isinstance(info.value, UnsafePickleError)
        assert "truncated" in str(info.value) or "not a valid Detectron pickle" in str(info.value), cut
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (np.random.default_rng(0).bytes(4096), "not a valid Detectron pickle"),
    (b"this is a text file\n", "not a valid Detectron pickle"),
    (b"PK\x03\x04" + bytes(60), "not a valid Detectron pickle"),  # a zip, e.g. a torch .pt
])
def test_non_pickles_fail_cleanly(tmp_path, data, message):
    with pytest.raises(ConvertError, match=message):
        read_detectron_pkl(_write(tmp_path / "x.pkl", data))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConvertError, match="cannot read .*No such file"):
        read_detectron_pkl(tmp_path / "absent.pkl")
    with pytest.raises(ConvertError, match="cannot read .*Is a directory"):
        read_detectron_pkl(tmp_path)


# ---------------------------------------------------------------------------------------------
# The Python-2-compatible writer
# ---------------------------------------------------------------------------------------------
def _special_values() -> np.ndarray:
    bits = np.array([0x80000000, 0x7F800000, 0xFF800000, 0x7FC00001, 0x7F800001, 0x00000001, 0x7F7FFFFF,
                     0x3F800000], dtype=np.uint32)  # -0, +inf, -inf, quiet NaN payload, signalling NaN, ...
    return bits.view(np.float32)


def test_writer_emits_python2_numpy1_opcodes(tmp_path):
    blobs = {"conv1_w": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "long": np.ones(100, np.float32),
             "conv1_w_momentum": np.zeros((2, 3, 2, 2), np.float32)}
    path = tmp_path / "out.pkl"
    write_detectron_pkl(path, blobs, "MODEL: {NUM_CLASSES: 81}\n", unicode_keys={"conv1_w_momentum"})
    data = path.read_bytes()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert ops[0] == ("PROTO", 2) and ops[-1] == ("STOP", None)
    names = {name for name, _ in ops}
    assert names <= {"PROTO", "EMPTY_DICT", "MARK", "SHORT_BINSTRING", "BINSTRING", "BINUNICODE", "GLOBAL",
                     "BINPUT", "BINGET", "BININT1", "BININT2", "BININT", "TUPLE1", "TUPLE3", "TUPLE", "REDUCE",
                     "BUILD", "NEWFALSE", "NONE", "SETITEMS", "STOP"}  # all in Python 2's protocol 2
    globals_ = [arg for name, arg in ops if name == "GLOBAL"]
    assert globals_ == ["numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"]
    assert b"numpy._core" not in data
    strings = [arg for name, arg in ops if name in ("SHORT_BINSTRING", "BINSTRING")]
    unicode = [arg for name, arg in ops if name == "BINUNICODE"]
    assert strings[:3] == ["cfg", "MODEL: {NUM_CLASSES: 81}\n", "blobs"]  # cfg first, as Detectron
    assert "conv1_w" in strings and "f4" in strings and "<" in strings and unicode == ["conv1_w_momentum"]
    # dtype('f4', 0, 1) with state (3, '<', None, None, None, -1, -1, 0), built once, then memo GETs
    assert ops.count(("GLOBAL", "numpy dtype")) == 1 and sum(name == "BINGET" for name, _ in ops) >= 4

    plain = pickle.loads(data, encoding="latin1")  # how Detectron's io.load_object reads under Python 3
    assert sorted(plain) == ["blobs", "cfg"]
    for name, array in blobs.items():
        assert plain["blobs"][name].dtype == np.float32 and plain["blobs"][name].flags.c_contiguous
        assert plain["blobs"][name].tobytes() == array.tobytes()


def test_writer_round_trips_bits_shapes_and_layouts(tmp_path):
    blobs = {"special": _special_values(), "scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 7), np.float32),
             "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
             "big": np.random.default_rng(1).standard_normal((70, 1000), dtype=np.float32)}
    path = tmp_path / "out.pkl"
    write_detectron_pkl(path, blobs, None)
    pkl = read_detectron_pkl(path)
    assert not pkl.wrapped and list(pkl.blobs) == list(blobs)
    for name, array in blobs.items():
        assert pkl.blobs[name].shape == array.shape and pkl.blobs[name].flags.c_contiguous
        assert pkl.blobs[name].tobytes() == np.ascontiguousarray(array).tobytes(), name


def test_writer_batches_large_dicts_like_python2(tmp_path):
    blobs = {f"b{i}": np.full(1, i, np.float32) for i in range(2345)}
    path = tmp_path / "many.pkl"
    write_detectron_pkl(path, blobs, "A: 1\n")
    ops = [op.name for op, _, _ in pickletools.genops(path.read_bytes())]
    assert ops.count("SETITEMS") == 4  # 1000 + 1000 + 345 blobs, then the top-level dict
    assert {k: float(v[0]) for k, v in read_detectron_pkl(path).blobs.items()} == {f"b{i}": i for i in range(2345)}


def test_writer_refuses_non_float32(tmp_path):
    with pytest.raises(TypeError, match="'fc6_w' is a float64 array"):
        write_detectron_pkl(tmp_path / "x.pkl", {"fc6_w": np.zeros(2)}, None)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"previous")
    calls = []
    real = pickle_io._Py2Pickler.ndarray

    def failing(self, array):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, array)

    monkeypatch.setattr(pickle_io._Py2Pickler, "ndarray", failing)
    blobs = {f"b{i}": np.ones(1000, np.float32) for i in range(5)}
    with pytest.raises(ConvertError, match=r"cannot write .*model.pkl: No space left on device"):
        write_detectron_pkl(path, blobs, "A: 1\n")
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pkl"]


def test_unwritable_locations(tmp_path):
    blobs = {"a": np.ones(1, np.float32)}
    with pytest.raises(ConvertError, match="cannot write .*No such file or directory"):
        write_detectron_pkl(tmp_path / "absent" / "x.pkl", blobs, None)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConvertError, match="cannot write .*Not a directory"):
        write_detectron_pkl(tmp_path / "file" / "x.pkl", blobs, None)
    (tmp_path / "dir.pkl").mkdir()
    with pytest.raises(ConvertError, match="cannot write .*dir.pkl: Is a directory"):
        write_detectron_pkl(tmp_path / "dir.pkl", blobs, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.pkl", "file"]


def test_permission_denied_is_a_convert_error(tmp_path, monkeypatch):
    """The message for a directory we may not write in (root may write anywhere, so the
    refusal is simulated where the temporary file is created)."""
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ConvertError, match="cannot write .*x.pkl: Permission denied"):
        write_detectron_pkl(tmp_path / "x.pkl", {"a": np.ones(1, np.float32)}, None)
    assert list(tmp_path.iterdir()) == []


NOBODY = 65534


def _in_child(fn) -> int:
    """Exit status of ``fn()`` run in a forked child; as root the child first drops to uid/gid
    ``NOBODY``, for whom permissions apply (status 3: that user cannot reach the test's folder)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 2
        try:
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            status = fn()
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_read_only_directory():
    """A folder we may not write in: a one-line error, nothing left in it. Root may write anywhere,
    so the write runs in a child process without root's privileges."""
    parent = tempfile.mkdtemp()   # the system temp folder: world-traversable, unlike pytest's tmp_path
    try:
        os.chmod(parent, 0o755)
        ro = os.path.join(parent, "ro")
        os.mkdir(ro, mode=0o555)

        def write() -> int:
            if not os.access(ro, os.R_OK | os.X_OK) or os.access(ro, os.W_OK):
                return 3
            try:
                write_detectron_pkl(os.path.join(ro, "x.pkl"), {"a": np.ones(1, np.float32)}, None)
            except ConvertError as e:
                return 0 if re.fullmatch(r"cannot write .*x\.pkl: Permission denied", str(e)) else 1
            return 1

        status = _in_child(write)
        if status == 3:
            pytest.skip(f"an unprivileged user cannot reach {parent}")
        assert status == 0
        assert os.listdir(ro) == []
    finally:
        shutil.rmtree(parent)
