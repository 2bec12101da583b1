"""Model-zoo downloads into a local cache: resumable, md5-checked, never half-written.

Detectron publishes an ``.md5sum`` twin of every download URL (MODEL_ZOO.md: "append
``.md5sum`` to the URL"). A download goes to ``NAME.part`` beside its final place, resumes
with an HTTP ``Range`` request after a dropped connection (here or in a later run), and is
renamed to its final name only once its md5 equals the published one; a mismatch deletes
the partial file. So the cache only ever holds complete, verified files (and, after an
interruption, a ``.part`` to resume from). Standard library only (``urllib``).
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from detectron_parity.fileio import InputError, PathLike

logger = logging.getLogger(__name__)

CACHE_ENV = "DETECTRON_CACHE"
_CHUNK = 1 << 20
_MD5_RE = re.compile(rb"\b([0-9a-fA-F]{32})\b")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(InputError):
    """A download that failed; the message names the URL (the CLI exits with status 2)."""


class _Interrupted(Exception):
    """The connection ended before the announced length: resumable."""


def cache_dir() -> Path:
    """``$DETECTRON_CACHE``, else ``detectron-parity`` in the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "detectron-parity"


def file_md5(path: PathLike) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unreachable(url: str, reason: object) -> DownloadError:
    return DownloadError(f"cannot download {url} ({reason}); offline? if you have the file, pass --weights FILE")


def _open(url: str, timeout: float, offset: int = 0) -> http.client.HTTPResponse:
    headers = {"User-Agent": "detectron-parity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        if e.code == 416 and offset:
            raise  # the caller knows what an unsatisfiable range means
        raise DownloadError(f"cannot download {url} (HTTP {e.code} {e.reason}); "
                            "if you have the file, pass --weights FILE") from None
    except (URLError, OSError, http.client.HTTPException) as e:
        raise _unreachable(url, getattr(e, "reason", None) or e) from None


def published_md5(md5_url: str, timeout: float = 30.0) -> str:
    """The md5 in Detectron's ``.md5sum`` file at ``md5_url``."""
    try:
        with _open(md5_url, timeout) as resp:
            text = resp.read(4096)
    except (OSError, http.client.HTTPException) as e:
        raise _unreachable(md5_url, e) from None
    match = _MD5_RE.search(text)
    if match is None:
        raise DownloadError(f"{md5_url}: no md5 sum in the published .md5sum file")
    return match.group(1).decode().lower()


def _fetch_into(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (all of it if the server ignores ``Range``)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, timeout, offset)
    except HTTPError:  # 416: nothing left to fetch, the md5 decides
        return
    with resp:
        if offset and resp.status == 206:
            m = _CONTENT_RANGE_RE.fullmatch(resp.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != offset:
                raise DownloadError(f"{url}: the server answered the resume request with a wrong range "
                                    f"({resp.headers.get('Content-Range')!r})")
        elif offset:
            logger.info("%s: the server does not resume; downloading from the start", url)
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(part, "ab" if offset else "wb") as f, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name.removesuffix(".part"), disable=not progress, dynamic_ncols=True) as bar:
            try:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, OSError) as e:  # dropped connection, reset, timeout
                raise _Interrupted(str(e) or type(e).__name__) from None
            finally:
                f.flush()
                os.fsync(f.fileno())
            if total is not None and f.tell() < total:
                raise _Interrupted(f"connection closed at {f.tell()} of {total} bytes")


def download(url: str, dest: PathLike, md5: str, *, timeout: float = 60.0, attempts: int = 3,
             progress: bool = True) -> Path:
    """``dest``, downloaded from ``url`` unless already there with md5 ``md5``.

    A dropped connection is resumed (``attempts`` tries in all; a later call resumes too).
    Every failure is a :class:`DownloadError` naming the URL; a checksum mismatch deletes
    the partial file. ``dest`` appears only complete and verified.
    """
    dest = Path(dest)
    if dest.is_file():
        if file_md5(dest) == md5:
            logger.info("%s: in the cache, md5 ok", dest)
            return dest
        logger.warning("%s: md5 differs from the published %s; downloading it again", dest, md5)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            _fetch_into(url, part, timeout, progress)
            break
        except _Interrupted as e:
            size = part.stat().st_size if part.exists() else 0
            if attempt == attempts:
                raise DownloadError(f"download of {url} interrupted ({e}) after {size} bytes; run again to "
                                    f"resume from {part}") from None
            logger.warning("download of %s interrupted (%s) after %d bytes; resuming", url, e, size)
    got = file_md5(part)
    if got != md5:
        part.unlink()
        raise DownloadError(f"{url}: md5 {got} differs from the published {md5}; deleted the partial file {part}")
    os.replace(part, dest)
    logger.info("downloaded %s -> %s (md5 ok)", url, dest)
    return dest
