"""The arithmetic precision of gradient work: crafting, training. Never of a judgement.

Every gradient the tool computes — the attacks' input gradients (BPDA included), the training
of P, M, Stack's head, the substitute model and the Trapdoor model — may run under
``torch.autocast`` in a lower precision, with the model's convolutions in channels-last
memory format. Every *judgement* — clean accuracy, agreement, AC_MoP, AC_M, DAC, detection
scores and thresholds, checkpoint selection, the choice of an attack's labels — runs the
real model in float32, outside autocast.

Precisions: ``fp32`` (float32, NCHW: what the tool did before, bit for bit), ``bf16``
(bfloat16 autocast + channels-last: CPUs with AVX512-BF16 or AMX, and CUDA GPUs that support
it), ``fp16`` (float16 autocast + channels-last; CUDA only: CPUs have no fast float16) and
``auto``: measured once per process and model shape (:func:`resolve`) — a short timed forward
and backward to the input in float32 and in each candidate, the fastest kept only when it is
at least :data:`AUTO_MIN_SPEEDUP` times faster than float32; else float32.

The requested precision comes from the ``precision=`` argument of a function, else the
process default (:func:`set_default`, what the CLI's ``--precision`` sets), else
``$LURING_PRECISION``, else ``fp32`` for the Python API (the CLI's default is ``auto``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Iterator

import torch
from torch import nn

from luring.errors import LuringError

__all__ = ["PRECISIONS", "AUTO_MIN_SPEEDUP", "requested", "set_default", "using", "resolve",
           "autocast", "uses_channels_last", "to_channels_last", "to_contiguous",
           "gradient_twin", "measure", "describe", "check_precision", "training_format",
           "batch_format"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: ``auto`` picks a lower precision only when it is at least this much faster than float32.
AUTO_MIN_SPEEDUP = 1.3
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_default: str | None = None
_cache: dict[tuple, tuple[str, dict[str, float]]] = {}


def check_precision(value: str | None, *, option: str = "precision") -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else a one-line LuringError."""
    if value not in PRECISIONS:
        raise LuringError(f"unknown {option} {value!r}; choose one of {', '.join(PRECISIONS)}")
    return str(value)


def set_default(precision: str | None) -> None:
    """Set the process default (None: back to ``$LURING_PRECISION`` / fp32)."""
    global _default
    _default = None if precision is None else check_precision(precision)


@contextlib.contextmanager
def using(precision: str | None) -> Iterator[None]:
    """Make ``precision`` the process default for a block, restoring the previous default
    (not a resolved copy of it) afterwards, whatever happens."""
    global _default
    old = _default
    set_default(precision)
    try:
        yield
    finally:
        _default = old


def requested(precision: str | None = None) -> str:
    """The requested precision: ``precision``, else the process default, else
    ``$LURING_PRECISION``, else ``fp32``."""
    if precision is not None:
        return check_precision(precision)
    if _default is not None:
        return _default
    env = os.environ.get("LURING_PRECISION")
    if env:
        return check_precision(env, option="$LURING_PRECISION")
    return "fp32"


def _device_of(model: nn.Module | None, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
    return torch.device("cpu")


def _supported(precision: str, dev: torch.device) -> bool:
    if precision == "fp32":
        return True
    if dev.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    return precision == "bf16" and dev.type == "cpu"


def _has_conv(model: nn.Module) -> bool:
    return isinstance(model, nn.Module) and any(
        isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def uses_channels_last(precision: str, model: nn.Module) -> bool:
    """Channels-last memory format for a lower precision on a model with 2-d convolutions."""
    return precision in _DTYPES and _has_conv(model)


def to_channels_last(*modules: nn.Module | None) -> None:
    """Put the 4-d parameters and buffers of ``modules`` in channels-last format, in place
    (values unchanged; Parameter objects kept, so optimisers stay valid)."""
    for m in modules:
        if isinstance(m, nn.Module):
            m.to(memory_format=torch.channels_last)


def to_contiguous(*modules: nn.Module | None) -> None:
    """Undo :func:`to_channels_last` (the format checkpoints and judgements use)."""
    for m in modules:
        if isinstance(m, nn.Module):
            m.to(memory_format=torch.contiguous_format)


def batch_format(x: torch.Tensor, precision: str) -> torch.Tensor:
    """A batch (N, C, H, W) in the memory format ``precision`` computes in: channels-last
    below float32 (matching :func:`gradient_twin` and :func:`training_format`), else as is.
    Values are unchanged; gradients flow through."""
    if precision in _DTYPES and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to the precision's type on ``device`` (a no-op for fp32)."""
    if precision not in _DTYPES:
        return contextlib.nullcontext()
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=_DTYPES[precision])


def gradient_twin(model: nn.Module, precision: str) -> nn.Module:
    """The module that computes gradients in ``precision``: ``model`` itself for fp32 (or a
    model without convolutions), else a deep copy with channels-last weights (the same values:
    the attacked model is never changed). Falls back to ``model`` when it cannot be copied."""
    if not uses_channels_last(precision, model):
        return model
    try:
        twin = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - e.g. a module holding an uncopyable handle
        return model
    to_channels_last(twin)
    return twin


def _time(model: nn.Module, x: torch.Tensor, precision: str, reps: int) -> float:
    """Seconds per forward + backward to the input of ``model`` on ``x`` (median of reps)."""
    m = gradient_twin(model, precision)
    xin = x.contiguous(memory_format=torch.channels_last) \
        if uses_channels_last(precision, model) and x.dim() == 4 else x

    def once() -> None:
        xi = xin.detach().requires_grad_(True)
        with torch.enable_grad(), autocast(precision, x.device):
            out = m(xi)
        torch.autograd.grad(out.float().logsumexp(1).sum(), xi)

    times = []
    for i in range(reps + 1):
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        once()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure(model: nn.Module, sample_shape: tuple[int, ...], device: torch.device | str,
            batch: int = 64, reps: int = 3) -> dict[str, float]:
    """Seconds per forward + backward of ``model`` on a random batch of ``batch`` images of
    shape ``sample_shape`` (C, H, W), per supported precision (fp32 and the candidates)."""
    dev = torch.device(device)
    x = torch.rand((batch, *sample_shape), generator=torch.Generator().manual_seed(0)).to(dev)
    modes = [(m, m.training) for m in model.modules()]  # each submodule's own mode (M inside
    model.eval()                                        # T stays in eval when P trains)
    try:
        return {p: _time(model, x, p, reps) for p in ("fp32", "bf16", "fp16")
                if _supported(p, dev)}
    finally:
        for m, mode in modes:
            m.training = mode


def resolve(precision: str | None, model: nn.Module | None = None,
            device: torch.device | str | None = None,
            sample_shape: tuple[int, ...] | None = None) -> str:
    """The concrete precision (fp32, bf16 or fp16) to compute ``model``'s gradients in.

    ``precision`` None reads :func:`requested`. An explicit lower precision the device cannot
    run is a one-line LuringError. ``auto`` times ``model`` (on images of ``sample_shape``,
    default the first conv's input channels at 28×28 / 32×32) once per process and model
    shape and keeps the result; without a model it is fp32."""
    want = requested(precision)
    dev = _device_of(model, device)
    if want != "auto":
        if not _supported(want, dev):
            hint = "use --precision bf16 or fp32" if dev.type == "cpu" else \
                "use --precision fp16 or fp32"
            raise LuringError(f"precision {want} is not available on {dev.type}; {hint}")
        return want
    if not isinstance(model, nn.Module) or not _has_conv(model):
        return "fp32"
    shape = tuple(sample_shape) if sample_shape is not None else _guess_shape(model)
    key = (dev.type, dev.index, type(model).__name__,
           tuple((n, tuple(p.shape)) for n, p in model.named_parameters()), shape)
    if key not in _cache:
        try:
            times = measure(model, shape, dev)
        except RuntimeError:
            times = {}
        best = "fp32"
        if times:
            cand = min((p for p in times if p != "fp32"), key=times.get, default=None)
            if cand is not None and times["fp32"] >= AUTO_MIN_SPEEDUP * times[cand]:
                best = cand
        _cache[key] = (best, times)
    return _cache[key][0]


def _guess_shape(model: nn.Module) -> tuple[int, int, int]:
    conv = next(m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))
    c = int(conv.in_channels)
    return (c, 28, 28) if c == 1 else (c, 32, 32)


def describe(precision: str) -> str:
    """A phrase for reports: what computed the gradients."""
    return {"fp32": "float32", "bf16": "bfloat16 autocast, channels-last",
            "fp16": "float16 autocast, channels-last"}.get(precision, precision)


@contextlib.contextmanager
def training_format(precision: str, *modules: nn.Module | None) -> Iterator[None]:
    """Channels-last for the duration of a lower-precision training (for models with
    convolutions), restored to the contiguous format afterwards, whatever happens."""
    mods = [m for m in modules if isinstance(m, nn.Module) and uses_channels_last(precision, m)]
    to_channels_last(*mods)
    try:
        yield
    finally:
        to_contiguous(*mods)

