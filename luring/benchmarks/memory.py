"""Resident memory: current and peak RSS of this process, peaks of child processes, and the
``luring demo`` wall-time / memory measurement.

Sources, best first: current RSS from psutil when installed, else ``VmRSS`` of
``/proc/self/status``; peak RSS from ``VmHWM`` (which Linux lets a process reset to the
current RSS by writing ``5`` to ``/proc/self/clear_refs``), else
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (a lifetime peak that cannot be reset). A
child's peak comes from ``os.wait4``'s ``ru_maxrss`` for exactly that child (its own
waited-for children included). Every measurement says which source it used.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["rss_now", "peak_rss", "reset_peak", "measure_peak", "run_child", "MB",
           "rss_source"]

MB = 1024 * 1024
_PROC = Path("/proc/self/status")


def _proc_field(name: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (None off Linux)."""
    try:
        for line in _PROC.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _maxrss_bytes(value: int) -> int:
    """``ru_maxrss`` is in kilobytes on Linux and in bytes on macOS."""
    return value if sys.platform == "darwin" else value * 1024


def rss_source() -> str:
    """Where :func:`rss_now` reads from."""
    try:
        import psutil  # noqa: F401
        return "psutil.Process().memory_info().rss"
    except ImportError:
        return "/proc/self/status VmRSS" if _proc_field("VmRSS") is not None else "unavailable"


def rss_now() -> int | None:
    """Current resident set size of this process in bytes (None if unknown)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return _proc_field("VmRSS")


def peak_rss() -> tuple[int | None, str]:
    """(peak RSS of this process in bytes, source): ``VmHWM`` where available (resettable,
    see :func:`reset_peak`), else the lifetime ``ru_maxrss``."""
    hwm = _proc_field("VmHWM")
    if hwm is not None:
        return hwm, "/proc/self/status VmHWM"
    try:
        import resource

        return _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), \
            "resource.getrusage(RUSAGE_SELF).ru_maxrss (lifetime peak)"
    except (ImportError, OSError):
        return None, "unavailable"


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``/proc/self/clear_refs``); True if done."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_peak(call: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``call()`` and measure this process's peak RSS while it ran.

    Returns ``(call's result, {"rss_before_mb", "peak_rss_mb", "delta_mb", "peak_reset",
    "source"})``. ``delta_mb`` is the rise of the peak over the RSS just before; when the
    peak could not be reset it is the process's lifetime peak (``peak_reset`` False)."""
    gc.collect()
    before = rss_now()
    was_reset = reset_peak()
    result = call()
    peak, source = peak_rss()
    info: dict[str, Any] = {
        "rss_before_mb": None if before is None else before / MB,
        "peak_rss_mb": None if peak is None else peak / MB,
        "delta_mb": None if peak is None or before is None else max(peak - before, 0) / MB,
        "peak_reset": was_reset, "source": source, "rss_source": rss_source()}
    return result, info


def run_child(args: list[str], *, timeout: float | None = None, env: dict[str, str] | None
              = None, cwd: str | os.PathLike | None = None,
              log_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run ``args`` as a child process; return ``{"returncode", "seconds", "maxrss_mb",
    "maxrss_source"}``. stdout and stderr go to ``log_path`` (or are discarded).

    The child's peak RSS is ``ru_maxrss`` from ``os.wait4`` for that child alone; without
    ``wait4`` (not on Unix) it is ``getrusage(RUSAGE_CHILDREN)``, the largest of all
    children so far, which only bounds it from above."""
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        if hasattr(os, "wait4"):
            deadline = None if timeout is None else t0 + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
                if pid:
                    break
                if deadline is not None and time.perf_counter() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)
            maxrss, source = _maxrss_bytes(usage.ru_maxrss), "os.wait4 ru_maxrss (this child)"
        else:  # pragma: no cover - Windows
            proc.wait(timeout=timeout)
            import resource

            maxrss = _maxrss_bytes(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
            source = "getrusage(RUSAGE_CHILDREN) ru_maxrss (max over all children)"
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - t0,
            "maxrss_mb": maxrss / MB, "maxrss_source": source}


def child_measure(spec_path: Path, out_path: Path, *, timeout: float | None = None
                  ) -> dict[str, Any]:
    """Run ``python -m luring.benchmarks.child SPEC OUT`` and merge the child's own report
    (its in-process peak during the contender) with its wait4 peak."""
    log = out_path.with_suffix(".log")
    res = run_child([sys.executable, "-m", "luring.benchmarks.child", str(spec_path),
                     str(out_path)], timeout=timeout, log_path=log)
    try:
        res.update(json.loads(out_path.read_text()))
    except (OSError, json.JSONDecodeError):
        tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
        res["error"] = f"child failed (exit {res['returncode']}): {tail.strip()}"
    return res
