"""Small shared helpers: atomic writes, seeding, device choice, progress bars, versions.

Every stage uses these; none of them imports any other part of ``luring`` except errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from luring.errors import LuringError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "read_json",
    "ensure_dir",
    "seed_everything",
    "make_generator",
    "resolve_device",
    "progress",
    "versions",
    "check_images",
    "check_range",
    "to_jsonable",
    "wilson_interval",
    "fingerprint",
    "UMASK",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process's file-creation mask, read once at import (files and staging directories are
#: given the usual ``0o666 & ~UMASK`` / ``0o777 & ~UMASK`` permissions).
UMASK = _current_umask()


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) or raise a one-line :class:`LuringError`."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise LuringError(
            f"output directory {p} cannot be written ({exc.strerror or exc}); "
            "choose another --out or fix its permissions"
        ) from None
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, fsync,
    then ``os.replace``. A reader sees the old file or the new one, never half of one."""
    p = Path(path)
    ensure_dir(p.parent)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, paths and tuples into plain JSON values.
    Non-finite floats become ``None`` so that the JSON stays standard."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _hash_into(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"dict:{len(obj)}:".encode())
        for k in sorted(obj, key=str):
            h.update(f"{k!s}=".encode())
            _hash_into(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"list:{len(obj)}:".encode())
        for v in obj:
            _hash_into(h, v)
    else:
        h.update(("json:" + json.dumps(to_jsonable(obj), sort_keys=True) + ";").encode())


def fingerprint(*parts: Any) -> str:
    """A 16-hex-digit SHA-256 fingerprint of tensors (dtype, shape and bytes), modules (their
    ``state_dict``: every parameter and buffer), and JSON-able values, in order. Equal
    content gives equal fingerprints on any device and in any process."""
    h = hashlib.sha256()
    for p in parts:
        _hash_into(h, p)
    return h.hexdigest()[:16]


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(path, text)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file or raise a one-line :class:`LuringError`."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LuringError(f"{p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LuringError(f"{p} is not readable JSON ({exc}); regenerate it") from None


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded with ``seed`` on ``device``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU. ``cuda`` without a GPU is a LuringError."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LuringError("--device cuda was asked for but no CUDA GPU is visible; "
                              "use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise LuringError(f"unknown device {device!r}; use auto, cpu or cuda")


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             disable: bool | None = None, unit: str = "it") -> Iterator:
    """A tqdm progress bar with ETA on stderr. Disabled when ``LURING_NO_PROGRESS`` is set."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = bool(os.environ.get("LURING_NO_PROGRESS"))
    return tqdm(iterable, total=total, desc=desc, disable=disable, unit=unit,
                dynamic_ncols=True, leave=False, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 5.0)


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import luring

    out = {
        "luring": luring.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import safetensors

        out["safetensors"] = safetensors.__version__
    except Exception:  # pragma: no cover - safetensors is a core dependency
        pass
    return out


def check_range(name: str, value: float, low: float, high: float, *, option: str | None = None,
                low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """Raise a LuringError unless ``low <= value <= high`` (inclusivity configurable)."""
    opt = option or name
    ok_low = value >= low if low_inclusive else value > low
    ok_high = value <= high if high_inclusive else value < high
    if not (ok_low and ok_high) or (isinstance(value, float) and math.isnan(value)):
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise LuringError(f"{opt} must be in {lo}{low}, {high}{hi}, got {value}")
    return value


def check_images(x: torch.Tensor, *, name: str = "images") -> torch.Tensor:
    """Check a float NCHW tensor has finite values in [0, 1]; raise a LuringError if not.
    A lazy view of images on disk (``luring.data.lazy.LazyImages``, attribute ``lazy``) is
    accepted as it is: its decoder returns float32 in [0, 1]."""
    if getattr(x, "lazy", False) and getattr(x, "dim", lambda: 0)() == 4:
        return x
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise LuringError(f"{name} must be a 4-D NCHW tensor, got shape {shape}")
    if not torch.is_floating_point(x):
        raise LuringError(f"{name} must be float in [0, 1], got dtype {x.dtype}; divide by 255")
    if not torch.isfinite(x).all():
        raise LuringError(f"{name} contain NaN or infinite values; clean the input")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise LuringError(
            f"{name} have values in [{x.min().item():.3g}, {x.max().item():.3g}], outside [0, 1]; "
            "scale pixels to [0, 1]"
        )
    return x


Z95 = 1.959964  # the standard normal quantile of a two-sided 95% interval


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval for ``k`` successes out of ``n`` trials (default 95%).

    ``centre = (p + z²/2n) / (1 + z²/n)``, ``half = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)``,
    clipped to [0, 1] (k = 0 gives exactly 0 below, k = n exactly 1 above). ``n == 0`` gives
    ``(None, None)``. Example: k = 5, n = 10 → (0.2366, 0.7634).
    """
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise LuringError(f"a Wilson interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None, None
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high
