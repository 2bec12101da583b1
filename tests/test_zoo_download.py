"""Model-zoo downloads from a real HTTP server on 127.0.0.1: resume after a dropped
connection, md5 against the published ``.md5sum``, 404 and offline errors, and a cache that
never holds a partial or unverified file under its final name."""
from __future__ import annotations

import hashlib
import socket

import numpy as np
import pytest

from convert.pickle_io import read_detectron_pkl, write_detectron_pkl
from parity import zoo
from parity.__main__ import main
from parity.download import DownloadError, download, file_md5, published_md5
from parity.zoo_run import ZOO_HOST

from .zoo_server import ZooServer

MODEL = "e2e_faster_rcnn_R-50-FPN_1x"


@pytest.fixture(scope="module")
def pkl_bytes(tmp_path_factory) -> bytes:
    """A small synthetic Detectron-format weights file (real layout, random values)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("pkl") / "model_final.pkl"
    blobs = {f"res{i}_0_branch2a_w": rng.standard_normal((64, 64, 1, 1)).astype(np.float32) for i in range(2, 6)}
    write_detectron_pkl(path, blobs, "MODEL:\n  NUM_CLASSES: 81\n")
    return path.read_bytes()


@pytest.fixture()
def server():
    with ZooServer() as s:
        yield s


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("DETECTRON_CACHE", str(path))
    return path


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _serve(server, pkl_bytes, md5=None):
    """Serve ``pkl_bytes`` at MODEL's zoo path and its md5 at the .md5sum path."""
    model = zoo.get(MODEL)
    path = model.url[len(ZOO_HOST):]
    server.files[path] = pkl_bytes
    server.files[path + ".md5sum"] = f"{md5 or hashlib.md5(pkl_bytes).hexdigest()}  model_final.pkl\n".encode()
    return path


def test_dropped_connection_resumes_with_range(server, pkl_bytes, tmp_path):
    server.files["m.pkl"] = pkl_bytes
    server.drop_once.add("m.pkl")
    dest = tmp_path / "c" / "m.pkl"
    got = download(server.base + "m.pkl", dest, hashlib.md5(pkl_bytes).hexdigest(), progress=False)
    assert got == dest and dest.read_bytes() == pkl_bytes
    half = len(pkl_bytes) // 2
    assert server.requests == [("/m.pkl", None), ("/m.pkl", f"bytes={half}-")]
    assert _files(tmp_path / "c") == ["m.pkl"]  # no .part left behind
    assert set(read_detectron_pkl(dest).blobs) == {f"res{i}_0_branch2a_w" for i in range(2, 6)}
    # in the cache and verified: no request at all
    download(server.base + "m.pkl", dest, hashlib.md5(pkl_bytes).hexdigest(), progress=False)
    assert len(server.requests) == 2


def test_interrupted_download_resumes_in_a_later_call(server, pkl_bytes, tmp_path):
    server.files["m.pkl"] = pkl_bytes
    server.drop_once.add("m.pkl")
    dest, md5 = tmp_path / "m.pkl", hashlib.md5(pkl_bytes).hexdigest()
    with pytest.raises(DownloadError, match=r"download of http://127\.0\.0\.1:\d+/m\.pkl interrupted .*run again to "
                                            r"resume"):
        download(server.base + "m.pkl", dest, md5, attempts=1, progress=False)
    assert _files(tmp_path) == ["m.pkl.part"]  # never under the final name
    assert (tmp_path / "m.pkl.part").read_bytes() == pkl_bytes[: len(pkl_bytes) // 2]
    download(server.base + "m.pkl", dest, md5, progress=False)
    assert _files(tmp_path) == ["m.pkl"] and dest.read_bytes() == pkl_bytes
    assert server.requests[-1] == ("/m.pkl", f"bytes={len(pkl_bytes) // 2}-")


def test_complete_part_file_answered_416_is_verified(server, pkl_bytes, tmp_path):
    server.files["m.pkl"] = pkl_bytes
    (tmp_path / "m.pkl.part").write_bytes(pkl_bytes)
    download(server.base + "m.pkl", tmp_path / "m.pkl", hashlib.md5(pkl_bytes).hexdigest(), progress=False)
    assert server.requests == [("/m.pkl", f"bytes={len(pkl_bytes)}-")]
    assert _files(tmp_path) == ["m.pkl"]


def test_wrong_md5_deletes_the_partial_file(server, pkl_bytes, tmp_path):
    server.files["m.pkl"] = pkl_bytes
    wrong = "0" * 32
    with pytest.raises(DownloadError, match=f"m.pkl: md5 {hashlib.md5(pkl_bytes).hexdigest()} differs from the "
                                            f"published {wrong}; deleted the partial file .*m.pkl.part"):
        download(server.base + "m.pkl", tmp_path / "m.pkl", wrong, progress=False)
    assert _files(tmp_path) == []
    # a corrupted file already in the cache is replaced by a verified download
    (tmp_path / "m.pkl").write_bytes(b"corrupt")
    download(server.base + "m.pkl", tmp_path / "m.pkl", hashlib.md5(pkl_bytes).hexdigest(), progress=False)
    assert (tmp_path / "m.pkl").read_bytes() == pkl_bytes and _files(tmp_path) == ["m.pkl"]


def test_404_and_bad_md5sum_file(server, tmp_path):
    with pytest.raises(DownloadError, match=r"cannot download http://127\.0\.0\.1:\d+/nothing\.pkl \(HTTP 404 Not "
                                            r"Found\); if you have the file, pass --weights FILE"):
        download(server.base + "nothing.pkl", tmp_path / "x.pkl", "0" * 32, progress=False)
    assert _files(tmp_path) == []
    server.files["m.pkl.md5sum"] = b"<html>not a checksum</html>"
    with pytest.raises(DownloadError, match="no md5 sum in the published .md5sum file"):
        published_md5(server.base + "m.pkl.md5sum")
    server.files["m.pkl.md5sum"] = b"D41D8CD98F00B204E9800998ECF8427E  model_final.pkl\n"
    assert published_md5(server.base + "m.pkl.md5sum") == "d41d8cd98f00b204e9800998ecf8427e"


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _error(err: str) -> str:
    """The one error line (stderr also carries the progress bar)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.endswith(lines[0] + "\n"), err
    return lines[0]


def test_zoo_download_cli(server, pkl_bytes, cache, capsys):
    path = _serve(server, pkl_bytes)
    server.drop_once.add(path)
    status, out, _ = _run(capsys, "zoo", "download", MODEL, "--mirror", server.base)
    assert status == 0 and out == f"{cache / MODEL / 'model_final.pkl'}\n"
    md5 = hashlib.md5(pkl_bytes).hexdigest()
    assert _files(cache) == [f"{MODEL}/model_final.pkl", f"{MODEL}/model_final.pkl.md5sum"]
    assert file_md5(out.strip()) == md5 and (cache / MODEL / "model_final.pkl.md5sum").read_text() == md5 + "\n"
    # the published .md5sum is fetched first, then the model; the dropped transfer resumed
    assert [r[0] for r in server.requests] == ["/" + path + ".md5sum", "/" + path, "/" + path]
    # in the cache: only the .md5sum is fetched again; offline, the md5 saved with the file vouches for it
    assert _run(capsys, "zoo", "download", MODEL, "--mirror", server.base)[0] == 0 and len(server.requests) == 4
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    assert _run(capsys, "zoo", "download", MODEL, "--mirror", closed, "--timeout", "5")[1] == out
    (cache / MODEL / "model_final.pkl").write_bytes(b"tampered")
    status, _, err = _run(capsys, "zoo", "download", MODEL, "--mirror", closed, "--timeout", "5")
    assert status == 2 and _error(err).startswith(f"error: cannot download {closed}")


def test_zoo_cli_download_errors_leave_nothing(server, pkl_bytes, cache, capsys, tmp_path):
    _serve(server, pkl_bytes, md5="f" * 32)
    status, _, err = _run(capsys, "zoo", "download", MODEL, "--mirror", server.base)
    assert status == 2 and "differs from the published ffff" in _error(err) and "deleted the partial" in err
    assert _files(cache) == []
    status, _, err = _run(capsys, "zoo", "download", "e2e_mask_rcnn_R-50-FPN_1x", "--mirror", server.base)
    assert status == 2 and "HTTP 404" in _error(err) and "--weights" in err
    assert _files(cache) == []
    # offline: nothing listens on this port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    status, _, err = _run(capsys, "zoo", "run", MODEL, "--mirror", closed, "--data_root", tmp_path,
                          "--timeout", "5")
    assert status == 2  # the data root is checked before any download
    assert err == f"error: {MODEL}: coco_2017_val: {tmp_path}/coco/annotations/instances_val2017.json not found " \
                  f"(data root from the argument or DETECTRON_DATA_ROOT)\n"
    status, _, err = _run(capsys, "zoo", "download", MODEL, "--mirror", closed, "--timeout", "5")
    assert status == 2 and _error(err).startswith(f"error: cannot download {closed}")
    assert "offline? if you have the file, pass --weights FILE" in err
    assert _files(cache) == []


def test_zoo_cli_refusals(capsys, cache, tmp_path):
    status, _, err = _run(capsys, "zoo", "run", "R-50", "--data_root", tmp_path)
    assert status == 2 and "R-50 is an ImageNet backbone, not a detector" in err
    status, _, err = _run(capsys, "zoo", "download", "scratch_e2e_mask_rcnn_R-50-FPN_3x_gn")
    assert status == 2 and err == ("error: scratch_e2e_mask_rcnn_R-50-FPN_3x_gn: Detectron published no download "
                                   "for this model; pass --weights FILE\n")
    status, _, err = _run(capsys, "zoo", "run", "35858933", "--data_root", tmp_path, "--weights", tmp_path / "no.pkl")
    assert status == 2 and err == f"error: --weights {tmp_path / 'no.pkl'}: file not found\n"
    status, _, err = _run(capsys, "zoo", "run", "e2e_mask_rcnn_R-50-FPN_1", "--data_root", tmp_path)
    assert status == 2 and "did you mean e2e_mask_rcnn_R-50-FPN_1x" in err
    assert _files(cache) == []
