"""Downloading the data sets: ``luring data download NAME``.

Each file is fetched with :mod:`urllib` into ``DEST.part``; an existing ``.part`` is resumed
with an HTTP ``Range`` request (a server that ignores it, answering 200, is restarted from the
beginning). The MD5 of the whole file is checked against :data:`luring.data.files.CHECKSUMS`
and only then is the ``.part`` renamed to its final name (``os.replace``: atomic); a mismatch
removes the ``.part``, so a bad file is never left under the final name. A network error keeps
the ``.part`` so that rerunning the command resumes it. A file already present with the right
MD5 is not fetched again.

CIFAR-10 is one tarball (binary batches by default, ``variant="py"`` for the python ones);
only its six expected regular-file members are extracted (``filter="data"`` where tarfile has
it), into a staging directory, then moved into ``ROOT/cifar-10-batches-{bin,py}/``: member
names with ``..``, absolute paths, links and devices are never written. The tarball is kept,
so a rerun verifies it instead of downloading it again.

URL base: ``url_base`` (``--url-base``), else ``$LURING_DATA_URL``, else the official mirrors.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from luring.data.cifar import BIN_DIR, PY_DIR, batch_names
from luring.data.files import expected_md5, md5sum, verify_checksum
from luring.data.registry import data_root, get_spec
from luring.errors import LuringError
from luring.utils import ensure_dir, progress

__all__ = ["Resource", "resources", "fetch", "extract_members", "download_dataset",
           "URL_ENV", "CHUNK"]

URL_ENV = "LURING_DATA_URL"
CHUNK = 1 << 16
_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class Resource:
    """One file to download: ``filename`` (at ``base_url``; also its key in the checksum
    table), saved as ``ROOT/subdir/filename``; ``extract`` names the member directory to
    extract when it is a tarball."""

    filename: str
    subdir: str
    base_url: str
    extract: str | None = None


def resources(name: str, variant: str | None = None) -> tuple[Resource, ...]:
    """What ``luring data download NAME`` fetches. ``variant`` picks CIFAR-10's tarball:
    ``bin`` (default) or ``py``."""
    spec = get_spec(name)
    if spec.embedded:
        return ()
    if variant not in (None, "bin", "py") or (variant and name != "cifar10"):
        raise LuringError(f"--format {variant} applies to cifar10 only (bin or py)")
    if name == "mnist":
        base = "https://ossci-datasets.s3.amazonaws.com/mnist/"
        return tuple(Resource(f, "MNIST/raw", base) for f in _MNIST_FILES)
    if name == "fashion-mnist":
        base = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
        return tuple(Resource(f, "FashionMNIST/raw", base) for f in _MNIST_FILES)
    if name == "cifar10":
        base = "https://www.cs.toronto.edu/~kriz/"
        if variant == "py":
            return (Resource("cifar-10-python.tar.gz", "", base, extract=PY_DIR),)
        return (Resource("cifar-10-binary.tar.gz", "", base, extract=BIN_DIR),)
    if name == "svhn":
        base = "http://ufldl.stanford.edu/housenumbers/"
        return tuple(Resource(f"{s}_32x32.mat", "svhn", base) for s in ("train", "test"))
    raise LuringError(f"no download is known for data set {name!r}")  # pragma: no cover


def _fail(url: str, why: str, *, resumable: bool) -> LuringError:
    tail = "; rerun the command to resume" if resumable else ""
    return LuringError(f"download of {url} failed: {why}; check the network connection or "
                       f"--url-base{tail}")


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    import luring

    headers = {"User-Agent": f"luring/{luring.__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            raise  # the caller restarts without Range
        raise _fail(url, f"HTTP {exc.code} {exc.reason}", resumable=False) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise _fail(url, str(why), resumable=bool(offset)) from None


def _resumes(resp: http.client.HTTPResponse, offset: int) -> bool:
    """True if ``resp`` is a 206 whose ``Content-Range: bytes START-END/TOTAL`` starts at
    byte ``offset``."""
    if resp.status != 206:
        return False
    unit, _, spec = resp.headers.get("Content-Range", "").strip().partition(" ")
    return unit == "bytes" and spec.split("-", 1)[0].strip() == str(offset)


def _transfer(url: str, part: Path, timeout: float, desc: str) -> None:
    """Append the rest of ``url`` to ``part`` (resuming when the server honours Range)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError:  # 416: the .part is not a prefix we can extend; restart
        part.unlink()
        offset = 0
        resp = _open(url, 0, timeout)
    if offset and not _resumes(resp, offset):
        offset = 0  # the server ignored Range: restart from the first byte
        if resp.status == 206:  # a range we did not ask for: ask for the whole file
            resp.close()
            resp = _open(url, 0, timeout)
    with resp:
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        received = offset
        try:
            with open(part, "ab" if offset else "wb") as fh, \
                    progress(total=total, desc=desc, unit="B") as bar:
                bar.update(offset)
                while block := resp.read(CHUNK):
                    fh.write(block)
                    received += len(block)
                    bar.update(len(block))
                fh.flush()
                os.fsync(fh.fileno())
        except (OSError, http.client.HTTPException) as exc:
            raise _fail(url, f"connection lost after {received} bytes ({exc})",
                        resumable=True) from None
    if total is not None and received != total:
        raise _fail(url, f"connection closed after {received} of {total} bytes", resumable=True)


def fetch(url: str, dest: Path, md5: str | None, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed if present), check its MD5
    (if ``md5`` is given) and atomically rename it. A resumed file that fails its checksum is
    fetched once more from scratch; a second failure removes the ``.part`` and raises."""
    ensure_dir(dest.parent)
    part = dest.with_name(dest.name + ".part")
    if md5 and part.is_file() and md5sum(part, cache=False) == md5.lower():
        os.replace(part, dest)  # finished earlier, interrupted before the rename
        return dest
    for attempt in (0, 1):
        resumed = part.exists() and part.stat().st_size > 0
        _transfer(url, part, timeout, dest.name)
        got = md5sum(part, cache=False) if md5 else None
        if md5 is None or got == md5.lower():
            os.replace(part, dest)
            return dest
        part.unlink()
        if not (resumed and attempt == 0):
            break
    raise LuringError(f"checksum mismatch for {url}: md5 {got}, expected {md5}; the download "
                      "was discarded (not saved); check --url-base or retry later")


def extract_members(archive: Path, root: Path, member_dir: str, names: tuple[str, ...]
                    ) -> list[Path]:
    """Extract ``member_dir/NAME`` for each of ``names`` from the tar.gz ``archive`` into
    ``root/member_dir/``. Only regular-file members with exactly those names are extracted."""
    wanted = {f"{member_dir}/{n}" for n in names}
    dest_dir = ensure_dir(root / member_dir)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            last = {m.name.removeprefix("./"): m for m in tar.getmembers()}  # last one wins
            members = [m for n, m in last.items() if n in wanted and m.isfile()]
            found = {m.name.removeprefix("./") for m in members}
            if found != wanted:
                raise LuringError(f"{archive} lacks {', '.join(sorted(wanted - found))}; it is "
                                  "not the CIFAR-10 tarball: delete it and download it again")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.10.12: members are vetted regular files
                tar.extractall(staging, members=members)
        out = []
        for m in members:
            target = dest_dir / Path(m.name).name
            os.replace(staging / m.name, target)
            out.append(target)
        return sorted(out)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise LuringError(f"cannot extract {archive} ({exc}); delete it and download it "
                          "again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_dataset(name: str, root: str | os.PathLike | None = None, *,
                     url_base: str | None = None, variant: str | None = None,
                     checksums: Mapping[str, str] | None = None, timeout: float = 60.0,
                     log: Callable[[str], None] | None = None) -> list[Path]:
    """Download data set ``name`` into ``root`` (see :func:`~luring.data.data_root`) in the
    layout its loader reads; returns the files in place. ``checksums`` replaces the
    published MD5 table for ``name`` (``{file name: md5}``)."""
    say = log or (lambda _msg: None)
    spec = get_spec(name)
    if spec.embedded:
        say(f"{name} is embedded in the package; nothing to download")
        return []
    base_dir = data_root(root)
    try:
        ensure_dir(base_dir)
    except LuringError:
        raise LuringError(f"data directory {base_dir} cannot be created or written; choose "
                          "another --data-dir (or $LURING_DATA) or fix its permissions") from None
    base = url_base or os.environ.get(URL_ENV) or None
    done: list[Path] = []
    for res in resources(name, variant):
        dest = base_dir / res.subdir / res.filename
        url = (base.rstrip("/") + "/" if base else res.base_url) + res.filename
        md5 = expected_md5(name, res.filename, checksums)
        fresh = False
        if dest.is_file() and (md5 is None or md5sum(dest) == md5.lower()):
            say(f"{dest}: already present{', md5 verified' if md5 else ''}")
        else:
            if dest.is_file():
                say(f"{dest}: checksum mismatch, downloading it again")
            say(f"downloading {url}")
            fetch(url, dest, md5, timeout=timeout)
            fresh = True
            say(f"{dest}: saved{', md5 verified' if md5 else ''}")
        if res.extract:
            names = tuple(f"{n}.bin" if res.extract == BIN_DIR else n
                          for n in batch_names("train") + batch_names("test"))
            targets = [base_dir / res.extract / n for n in names]
            if fresh or not all(t.is_file() for t in targets):
                extract_members(dest, base_dir, res.extract, names)
                say(f"extracted {len(names)} batches into {base_dir / res.extract}")
            for t in targets:  # the python batches have published MD5s too
                verify_checksum(t, name, base_dir, checksums)
            done += targets
        else:
            done.append(dest)
    return done
