"""The base every attack shares: validation, labels, chunking, counting, exact bounds, seeds.

An attack is a small callable object::

    atk = MIM(model, eps=0.3, steps=100)
    x_adv = atk(x, y)          # y=None: attack the model's own predictions

``x`` is float NCHW in [0, 1] (checked: NaN or values outside [0, 1] are a
:class:`~luring.errors.LuringError`); ``x_adv`` has the same shape, lies in [0, 1] and within
the attack's norm bound *exactly* (checked in float64 after the final rounding to float32).
Inputs are never modified. Work runs on the model's device (the inputs' when the model has
no parameters); the result comes back on the inputs' device.

Counting (reset at every call): ``n_forward`` / ``n_backward`` are batched model passes,
``n_queries`` the number of images the model evaluated (a forward on 128 images is 1 forward
and 128 queries). ``params()`` gives the resolved parameters as a JSON-able dict.

Seeds: randomness for example ``i`` of a call is drawn from a generator seeded with
``example_seed(seed, start_index + i, stream)``, so one example's result does not depend on
which other examples share its batch.

Chunks: a call works on fixed chunks of ``chunk`` images (``batch_size``, default
:func:`default_chunk`: 128 on a CPU, 1,024 on a GPU) at fixed *global* offsets: example
``start_index + i`` is in chunk ``(start_index + i) // chunk``, whatever the call's length.
Convolution kernels may change with a batch's shape (oneDNN picks them by shape on some
CPUs), so an image meets the same kernels whether it is attacked alone in its chunk, in a
longer call, or by one of K processes that each take whole chunks: the results are the same
bytes for any split of the work that keeps chunk boundaries.

Precision: gradient attacks compute their input gradients in ``precision``
(:mod:`luring.precision`: ``fp32``, ``bf16``, ``fp16`` or ``auto``; default the process
default) on a channels-last twin of the gradient model; the labels they attack and every
success judgement run the real model in float32.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luring import precision as prec
from luring.attacks.chunks import CHUNK, chunk_bounds, default_chunk
from luring.errors import LuringError
from luring.utils import check_images, check_range, make_generator

__all__ = [
    "Attack",
    "enforce_bounds",
    "example_seed",
    "example_generators",
    "margin",
    "model_device",
    "eval_frozen",
    "check_int",
    "check_float",
    "default_chunk",
    "chunk_bounds",
    "CHUNK",
]


_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def example_seed(seed: int, index: int, stream: str, *extra: int) -> int:
    """A 63-bit seed derived from ``(seed, example index, stream name, *extra)``.

    Distinct streams (``"pgd-start"``, ``"di"``, ...) give unrelated random numbers."""
    z = _splitmix64(int(seed) & _MASK64)
    for part in (zlib.crc32(stream.encode()), int(index), *map(int, extra)):
        z = _splitmix64(z ^ (part & _MASK64))
    return z & ((1 << 63) - 1)


def example_generators(seed: int, start: int, n: int, stream: str,
                       device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One seeded :class:`torch.Generator` on ``device`` per example ``start .. start+n-1``."""
    return [make_generator(example_seed(seed, start + i, stream), device) for i in range(n)]


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (None when it has neither)."""
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return None


@contextlib.contextmanager
def eval_frozen(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode with ``requires_grad=False`` parameters; restore both after
    (each submodule's own training flag, each parameter's own flag)."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p in params:
            p.requires_grad_(True)


def uniform_noise(x: torch.Tensor, eps: float, seed: int, index0: int, stream: str
                  ) -> torch.Tensor:
    """Per-example uniform noise in [-ε, ε]^(C×H×W) for a random start, example i drawn from
    its own generator (``example_generators(seed, index0, n, stream)``), so that it does not
    depend on the batch it is in. Same shape and device as x."""
    gens = example_generators(seed, index0, len(x), stream, x.device)
    return torch.stack([torch.empty(x.shape[1:], device=x.device).uniform_(-eps, eps, generator=g)
                        for g in gens])


def linf_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The l∞ ε-ball around images x (in [0, 1]) intersected with [0, 1]: per-pixel bounds
    ``(max(x - ε, 0), min(x + ε, 1))``, same shape as x."""
    return (x - eps).clamp_(0, 1), (x + eps).clamp_(0, 1)


def adam_step(m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, t: int, lr: float,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> torch.Tensor:
    """One Adam step for gradient ``g`` at step ``t`` (0-based): updates the moment estimates
    ``m`` and ``v`` in place and returns ``lr · m̂ / (√v̂ + eps)`` (same shape as g; the
    caller adds it to ascend or subtracts it to descend)."""
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    m_hat = m / (1 - beta1 ** (t + 1))
    v_hat = v / (1 - beta2 ** (t + 1))
    return lr * m_hat / (v_hat.sqrt() + eps)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` per example (N,): > 0 exactly when the prediction is not y.
    The true class is masked with -inf (not 0) before the max."""
    real = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf).amax(1)
    return other - real


def check_int(name: str, value: Any, low: int = 0) -> int:
    """An integer ≥ ``low`` or a one-line LuringError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise LuringError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, low: float = 0.0, high: float = math.inf, *,
                low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """A finite float in the range or a one-line LuringError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LuringError(f"{name} must be a number, got {value!r}") from None
    if math.isinf(v) and high == math.inf and v > 0:
        raise LuringError(f"{name} must be finite, got {v}")
    return check_range(name, v, low, high, low_inclusive=low_inclusive,
                       high_inclusive=high_inclusive)


def enforce_bounds(x_adv: torch.Tensor, x: torch.Tensor, *, linf: float | None = None,
                   l2: float | None = None) -> torch.Tensor:
    """Return float32 ``x'`` with ``0 <= x' <= 1``, ``|x' - x|_inf <= linf`` and
    ``||x' - x||_2 <= l2`` per example, all checked *exactly* in float64 after rounding to
    float32 (a 1-ulp overshoot is pulled back with ``nextafter``). NaN entries become x.

    Shapes: ``x_adv``, ``x`` (N, C, H, W); bounds in pixel units."""
    xd = x.double()
    d = torch.nan_to_num(x_adv.double() - xd, nan=0.0, posinf=0.0, neginf=0.0)
    n = len(x)
    if l2 is not None:
        target = l2 * (1 - 1e-6)
        norm = d.flatten(1).norm(dim=1)
        scale = torch.where(norm > target, target / norm.clamp_min(1e-300), torch.ones_like(norm))
        d = d * scale.view(n, *([1] * (d.dim() - 1)))
    if linf is not None:
        d = d.clamp(-linf, linf)
    out = (xd + d).clamp(0.0, 1.0).float()
    xf = x.float()
    shape = (n, *([1] * (x.dim() - 1)))
    for attempt in range(1, 11):
        changed = False
        if linf is not None:
            bad = (out.double() - xd).abs() > linf
            if bad.any():
                out = torch.where(bad, torch.nextafter(out, xf), out)
                changed = True
        if l2 is not None:
            norm = (out.double() - xd).flatten(1).norm(dim=1)
            over = norm > l2
            if over.any():
                shrink = (l2 / norm.clamp_min(1e-300)) * (1 - 1e-6 * 4**attempt)
                scale = torch.where(over, shrink, torch.ones_like(norm)).view(shape)
                out = (xd + (out.double() - xd) * scale).clamp(0.0, 1.0).float()
                changed = True
        if not changed:
            break
    return out


class Attack:
    """Base class. Subclasses set ``name``, implement ``_run(x, y, index0) -> x_adv`` for one
    chunk (x (n, C, H, W) on the work device, y (n,) int64, ``index0`` the index of the
    chunk's first example within the call) and ``_params()``; they may override
    ``_bounds()`` (the final exact projection) and ``_begin``/``_end`` (per-call state)."""

    name: str = "attack"

    #: Does this attack compute input gradients (and so honour ``precision``)?
    uses_gradients: bool = False

    def __init__(self, model: nn.Module, *, eps: float, seed: int = 0,
                 batch_size: int | None = None, precision: str | None = None) -> None:
        if not callable(model):
            raise LuringError(f"model must be a callable nn.Module, got {type(model).__name__}")
        self.model = model
        self.eps = check_float("eps", eps, 0.0, 1.0)
        self.seed = check_int("seed", seed, 0)
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, 1)
        self.n_forward = 0
        self.n_backward = 0
        self.n_queries = 0
        self.labels_from_model = False
        self.precision_requested = prec.requested(precision)
        #: the precision the last call computed gradients in (resolved from ``auto``)
        self.precision: str | None = None
        self._twin: nn.Module | None = None

    # ---- to override -------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {}

    def _run(self, x: torch.Tensor, y: torch.Tensor, index0: int) -> torch.Tensor:
        raise NotImplementedError

    def _bounds(self) -> dict[str, float | None]:
        return {"linf": self.eps, "l2": None}

    def _begin(self, n: int) -> None:
        """Called once per call before the first chunk (n = number of examples)."""

    def _end(self) -> None:
        """Called once per call after the last chunk."""

    def _models(self) -> list[nn.Module]:
        """The modules a call runs (each in eval mode with frozen parameters meanwhile)."""
        return [self.model]

    # ---- public ------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Resolved parameters (JSON-able), including ``eps``, ``seed`` and ``batch_size``."""
        out = {"eps": self.eps, **self._params(), "seed": self.seed,
               "batch_size": self.batch_size}
        if self.uses_gradients:
            out["precision"] = self.precision or self.precision_requested
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"

    @property
    def device(self) -> torch.device | None:
        """The model's device (None when the model has no parameters or buffers)."""
        return model_device(self.model)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
                 start_index: int = 0) -> torch.Tensor:
        """Craft adversarial examples.

        Args:
            x: float (N, C, H, W) in [0, 1]; not modified.
            y: int (N,) labels to move away from, or None for the model's own predictions.
            start_index: index of ``x[0]`` in a larger data set (seeds per-example
                randomness, so attacking ``x[4:8]`` with ``start_index=4`` reproduces the
                corresponding rows of the attack on ``x``).
        Returns:
            float32 (N, C, H, W) in [0, 1], within the norm bound, on ``x``'s device.
        """
        check_images(x, name="x")
        check_int("start_index", start_index, 0)
        dev = self.device or x.device
        x0 = x.detach().to(device=dev, dtype=torch.float32)
        n = len(x0)
        self.n_forward = self.n_backward = self.n_queries = 0
        with contextlib.ExitStack() as frozen:
            for m in self._models():
                frozen.enter_context(eval_frozen(m))
            step = self.chunk
            if y is None:
                self.labels_from_model = True
                y0 = self.predict(x0, start_index=start_index)
            else:
                self.labels_from_model = False
                y0 = self._check_labels(y, n).to(dev)
            self._prepare_gradients(x0)
            self._begin(n)
            try:
                outs = [enforce_bounds(self._run(x0[a:b], y0[a:b], start_index + a).detach(),
                                       x0[a:b], **self._bounds())
                        for a, b in chunk_bounds(start_index, n, step)]
            finally:
                self._twin = None
            self._end()
        out = torch.cat(outs) if outs else x0.clone()
        return out.to(x.device)

    @property
    def chunk(self) -> int:
        """Images per chunk: ``batch_size``, else :func:`default_chunk` for the device."""
        return self.batch_size or default_chunk(self.device)

    def _prepare_gradients(self, x: torch.Tensor) -> None:
        """Resolve the precision and build the gradient twin for this call."""
        if not self.uses_gradients:
            return
        gm = self.gradient_source
        self.precision = prec.resolve(self.precision_requested, gm if isinstance(
            gm, nn.Module) else None, x.device, tuple(x.shape[1:]))
        self._twin = prec.gradient_twin(gm, self.precision) if isinstance(gm, nn.Module) \
            else gm

    @property
    def gradient_source(self) -> nn.Module:
        """The module whose gradients the attack follows (the attacked model by default)."""
        return self.model

    def grad_logits(self, x: torch.Tensor) -> torch.Tensor:
        """One counted forward of the gradient source on ``x`` for a gradient: in the call's
        precision (autocast, channels-last twin) with float32 logits out; plain float32
        outside a call."""
        twin = self._twin if self._twin is not None else self.gradient_source
        p = self.precision or "fp32"
        if prec.uses_channels_last(p, twin):
            x = prec.batch_format(x, p)
        with prec.autocast(p, x.device):
            out = self._logits(x, twin)
        return out.float()

    # ---- helpers for subclasses ----------------------------------------------------------
    def _logits(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """One counted forward pass of ``model`` (default: the attacked model), with or
        without autograd."""
        self.n_forward += 1
        self.n_queries += len(x)
        return (self.model if model is None else model)(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int | None = None, start_index: int = 0
                ) -> torch.Tensor:
        """Counted float32 argmax predictions of the real model, in chunks of ``chunk``
        (default :attr:`chunk`) cut at the global multiples of it (``x[0]`` is example
        ``start_index``)."""
        step = chunk or self.chunk
        preds = [self._logits(x[a:b]).argmax(1)
                 for a, b in chunk_bounds(start_index, len(x), step)]
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=x.device)

    @staticmethod
    def _check_labels(y: Any, n: int) -> torch.Tensor:
        y = torch.as_tensor(y)
        if y.dim() != 1 or len(y) != n:
            raise LuringError(f"labels must have shape ({n},), got {tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
            raise LuringError(f"labels must be integers, got dtype {y.dtype}")
        if n and y.min() < 0:
            raise LuringError("labels must be ≥ 0 class indices")
        return y.long()
