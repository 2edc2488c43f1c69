"""Writing a defense directory as a whole, and checking on loading that it was not altered.

Writing (``luring train-defense``, :func:`~luring.defense.save_defense`, ``save_trapdoor``):

* :class:`OutputClaim` claims ``OUT`` for one writer: an exclusive ``flock`` on ``.OUT.lock``
  beside it (dropped by the kernel when its process dies), so that a second writer fails at
  once with a one-line LuringError. Holding it, it removes a killed run's leftovers
  (``.OUT.staging-*``, the older ``.OUT.partial-*``; an ``.OUT.old-*``, the previous directory
  of an interrupted swap, is put back when ``OUT`` is missing), checks ``OUT`` (``force=False``
  refuses a non-empty one; a non-empty directory that is not a defense directory is never
  replaced) and creates the staging directory ``.OUT.staging-<pid>-*`` to write into.
* :func:`publish` records the fingerprints of the staging directory's ``*.safetensors`` files
  in its ``defense.json`` (``"fingerprints": {name: luring.utils.fingerprint of the file's
  state dict}``) and renames it into place: exchanged atomically with an existing ``OUT``
  (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames), or renamed without replacing
  an ``OUT`` that appeared meanwhile (``RENAME_NOREPLACE``). Files of a replaced directory
  that are not a defense's own (a user's notes, an exported model) move into the new one. An
  ``OSError`` (a full disk, no permission) is a one-line LuringError; ``OUT`` stays as it was.

Reading: :func:`verify_fingerprints` refuses a file whose fingerprint is not the recorded one
(a swapped or damaged file; a TorchScript M's ``target.pt`` by its SHA-256); directories
written before fingerprints existed load as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from luring.defense.directory import FORMAT, is_defense_dir
from luring.errors import LuringError
from luring.models.checkpoint import load_state_dict_file
from luring.utils import UMASK, atomic_write_json, fingerprint, read_json

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system: the lock file's existence is the lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT", "OWN_FILES", "OutputClaim", "publish", "write_defense",
           "stamp_fingerprints", "verify_fingerprints", "file_fingerprint",
           "script_fingerprint", "is_defense_dir"]

#: The files the defense writers produce (M∘P defenses and trapdoor ones). Any other file of
#: a directory that a new defense replaces is moved into the new directory.
OWN_FILES = frozenset(
    [f"{n}.{e}" for n in ("target", "component", "head", "model") for e in ("safetensors",
                                                                               "json")]
    + ["target.pt", "head.pt", "calibration.safetensors", "trapdoor.safetensors",
       "defense.json", "config.json", "results.json", "report.md"])
_STAGING, _LEGACY_STAGING, _ASIDE = ".staging-", ".partial-", ".old-"
_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def _sibling_name(out: Path, tag: str) -> str:
    return f".{out.name}{tag}"


def _siblings(out: Path, tag: str) -> list[Path]:
    """The entries beside ``out`` named ``.OUT<tag>*``."""
    prefix = _sibling_name(out, tag)
    try:
        return sorted(out.parent / n for n in os.listdir(out.parent) if n.startswith(prefix))
    except OSError:
        return []


def _unwritable(shown: Path, exc: OSError) -> LuringError:
    return LuringError(f"output directory {shown} cannot be written ({exc.strerror or exc}); "
                       "choose another --out or fix its permissions")


def _take_lock(path: Path) -> int | None:
    """A descriptor holding the exclusive lock on ``path`` (created if missing), or None when
    another process (or thread) holds it. The holder deletes the file before releasing it, so
    the lock taken must be on the file still at ``path`` (else it is retried)."""
    for _ in range(20):
        if fcntl is None:  # pragma: no cover
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):  # informative only (a full disk is no reason)
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    return None


class OutputClaim:
    """The right to write the directory ``out`` (see the module docstring); a context manager
    (or :meth:`acquire` / :meth:`release`). ``force``: False refuses an existing non-empty
    ``out``, True and None (library use) replace it when it is a defense directory.
    Attribute ``stage``: the staging directory to write into, then :func:`publish`."""

    def __init__(self, out: str | os.PathLike, *, force: bool | None = None) -> None:
        self.shown = Path(out)
        self.out = Path(os.path.abspath(out))
        if self.out.is_symlink():
            self.out = self.out.resolve()
        self.force = force
        self.stage: Path | None = None
        self.lock_path = self.out.parent / f".{self.out.name}.lock"
        self._fd: int | None = None

    def acquire(self) -> OutputClaim:
        """Take the lock, clear a killed run's leftovers, check ``out``, create the staging
        directory. Raises a one-line LuringError (and holds nothing) when ``out`` is taken,
        refused or cannot be written."""
        o, shown = self.out, self.shown
        if not o.name:
            raise LuringError(f"--out {shown} is a file system root, not a directory to write "
                              "a defense into; choose another --out")
        if o.exists() and not o.is_dir():
            raise LuringError(f"--out {shown} exists and is not a directory; choose another "
                              "--out")
        try:
            o.parent.mkdir(parents=True, exist_ok=True)
            self._fd = _take_lock(self.lock_path)
        except OSError as exc:
            raise _unwritable(shown, exc) from None
        if self._fd is None:
            raise LuringError(f"another luring run is writing {shown} (it holds "
                              f"{self.lock_path}); wait for it to finish or choose another "
                              "--out")
        try:
            self._clear_leftovers()
            self._check_existing()
            self.stage = Path(tempfile.mkdtemp(
                prefix=f"{_sibling_name(o, _STAGING)}{os.getpid()}-", dir=o.parent))
        except OSError as exc:
            self.release()
            raise _unwritable(shown, exc) from None
        except BaseException:
            self.release()
            raise
        return self

    def _clear_leftovers(self) -> None:
        """Remove what a killed run left beside ``out`` (we hold the lock: nobody else is
        writing it); an interrupted swap's previous directory goes back when ``out`` is
        missing, and files of the user's left in one move into ``out``."""
        aside = _siblings(self.out, _ASIDE)
        for p in _siblings(self.out, _STAGING) + _siblings(self.out, _LEGACY_STAGING) + aside:
            if p in aside and not self.out.exists() and p.is_dir():
                os.rename(p, self.out)
            elif self.out.is_dir() and p.is_dir():  # a user's files of a killed swap: kept
                _carry_over(p, self.out)
            else:
                shutil.rmtree(p, ignore_errors=True)

    def _check_existing(self) -> None:
        o, shown = self.out, self.shown
        if not o.is_dir() or not any(os.scandir(o)):
            return
        defense = is_defense_dir(o)
        if self.force is False:
            what = "holds a defense" if defense else "exists and is not empty"
            raise LuringError(f"--out {shown} already {what}; pass --force to replace it, or "
                              "choose another --out")
        if not defense:
            raise LuringError(f"--out {shown} is not empty and is not a defense directory (no "
                              f"defense.json of format {FORMAT!r}); only a defense directory is "
                              "ever replaced: choose another --out")

    def release(self) -> None:
        """Remove the staging directory (if not published) and the lock."""
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            self.stage = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)  # before unlocking: see _take_lock
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputClaim:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def file_fingerprint(path: Path) -> str:
    """:func:`luring.utils.fingerprint` of the state dict stored in safetensors file ``path``
    (equal to the fingerprint of the module it was saved from)."""
    return fingerprint(load_state_dict_file(path))


def script_fingerprint(path: Path) -> str:
    """``sha256:`` + the SHA-256 of a checkpoint's TorchScript file (a TorchScript M's code)."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def stamp_fingerprints(directory: Path) -> None:
    """Record the fingerprint of every ``*.safetensors`` file of ``directory`` in its
    ``defense.json`` (``"fingerprints"``, keyed by the file's stem; a checkpoint's ``NAME.pt``
    keyed ``NAME.pt``, :func:`script_fingerprint`); no-op without one."""
    meta_path = directory / "defense.json"
    if not meta_path.is_file():
        return
    meta = read_json(meta_path)
    meta["fingerprints"] = {p.stem: file_fingerprint(p)
                            for p in sorted(directory.glob("*.safetensors"))} | {
        p.name: script_fingerprint(p) for p in sorted(directory.glob("*.pt"))
        if (directory / f"{p.stem}.safetensors").is_file()}
    atomic_write_json(meta_path, meta)


def verify_fingerprints(directory: str | os.PathLike, meta: dict[str, Any],
                        names: tuple[str, ...] | None = None) -> None:
    """Refuse (one-line LuringError naming the file) a ``NAME.safetensors`` file of a defense
    directory whose fingerprint is not the one ``defense.json`` (``meta``) records, and a
    ``NAME.pt`` (TorchScript) file when one is recorded; ``names``: the checkpoints to check
    (default: every recorded file). A directory without recorded
    fingerprints (written before they existed) passes; a missing or unreadable file is left
    to its loader to report."""
    d = Path(directory)
    recorded = meta.get("fingerprints")
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise LuringError(f"{d / 'defense.json'} has malformed fingerprints; retrain the "
                          "defense")
    for name in sorted(recorded) if names is None else [
            k for n in names for k in (n, f"{n}.pt") if k in recorded]:
        p = d / (name if name.endswith(".pt") else f"{name}.safetensors")
        try:
            got = script_fingerprint(p) if name.endswith(".pt") else file_fingerprint(p)
        except (LuringError, OSError):
            continue
        if got != recorded[name]:
            raise LuringError(f"{p} is not the file this defense was written with (fingerprint "
                              f"{got}, defense.json records {recorded[name]}): it was replaced "
                              "or damaged; put the original back or retrain the defense")


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False where it is unavailable (another system, an old C library,
    a file system without the flag), for the caller to fall back to plain renames."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


@functools.cache
def _libc_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _move_into_place(stage: Path, out: Path) -> Path | None:
    """Rename ``stage`` to ``out``; returns where the replaced directory now is (None when
    ``out`` did not exist). On an error ``out`` is as it was. The new directory gets the
    replaced one's permissions, else the usual ones (``mkdtemp`` makes it private)."""
    os.chmod(stage, stat.S_IMODE(out.stat().st_mode) if out.exists() else 0o777 & ~UMASK)
    if out.exists():
        if _renameat2(stage, out, _RENAME_EXCHANGE):
            return stage  # the staging path now holds the previous directory
        aside = out.parent / f"{_sibling_name(out, _ASIDE)}{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(out, aside)
        try:
            os.rename(stage, out)
        except OSError:
            os.rename(aside, out)
            raise
        return aside
    if not _renameat2(stage, out, _RENAME_NOREPLACE):
        os.rename(stage, out)
    return None


def _carry_over(old: Path, new: Path) -> None:
    """Move the entries of the replaced directory ``old`` that are not a defense's own files
    (nor a writer's hidden temporary files) into ``new``, then delete ``old``. One that
    cannot be moved keeps ``old`` as a visible sibling, with a warning."""
    failed = []
    for name in sorted(os.listdir(old)):
        if name in OWN_FILES or (name.startswith(".") and name.endswith(".tmp")) \
                or (new / name).exists():
            continue
        try:
            os.rename(old / name, new / name)
        except OSError:
            failed.append(name)
    if not failed:
        shutil.rmtree(old, ignore_errors=True)
        return
    kept = new.parent / f"{new.name}.previous-{os.getpid()}"
    with contextlib.suppress(OSError):
        os.rename(old, kept)
        sys.stderr.write(f"luring: warning: could not move {', '.join(failed)} into the new "
                         f"{new}; the previous directory is kept as {kept}\n")


def publish(stage: Path, out: str | os.PathLike) -> Path:
    """Record the fingerprints in ``stage``'s ``defense.json`` and move the staging directory
    into place as a whole (see the module docstring); the staging directory is gone
    afterwards. An existing non-empty ``out`` that is not a defense directory is never
    replaced. Errors are one-line LuringErrors that leave ``out`` unchanged. A symbolic link
    ``out`` is followed: the directory it points to is replaced."""
    shown = Path(out)
    o = Path(os.path.abspath(out))
    o = o.resolve() if o.is_symlink() else o
    moved = False
    try:
        if o.exists() and not o.is_dir():
            raise LuringError(f"{shown} exists and is not a directory; choose another --out")
        if o.is_dir() and any(os.scandir(o)) and not is_defense_dir(o):
            raise LuringError(f"{shown} is not empty and is not a defense directory; only a "
                              "defense directory is ever replaced: choose another --out")
        stamp_fingerprints(stage)
        old = _move_into_place(stage, o)
        moved = True
    except FileExistsError:
        raise LuringError(f"{shown} was created by someone else while this run was writing it; "
                          "nothing was written there: rerun with --force to replace it") from None
    except OSError as exc:
        raise LuringError(f"cannot write the defense into {shown} ({exc.strerror or exc}); its "
                          "previous contents are unchanged: free some space or fix the "
                          "permissions and rerun") from None
    finally:
        if not moved:  # the new files never reached ``out``
            shutil.rmtree(stage, ignore_errors=True)
    if old is not None:
        _carry_over(old, o)
    return shown


def write_defense(out: str | os.PathLike, write: Callable[[Path], None],
                  stage: Path | None = None) -> Path:
    """Run ``write(staging directory)`` and :func:`publish` the result to ``out``. ``stage``:
    a staging directory the caller claimed (an :class:`OutputClaim`'s); None: claim ``out``
    here (a second writer fails at once). An ``OSError`` while writing (a full disk) is a
    one-line LuringError; ``out`` is then unchanged and the staging directory removed."""
    if stage is None:
        with OutputClaim(out) as claim:
            assert claim.stage is not None
            return write_defense(out, write, claim.stage)
    try:
        write(stage)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise LuringError(f"cannot write the defense into {out} ({exc.strerror or exc}); "
                          "nothing was changed there: free some space or fix the permissions "
                          "and rerun") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return publish(stage, out)
