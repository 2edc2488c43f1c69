"""Benchmark sizes (``full``, ``quick``, ``tiny``) and the performance targets.

Every size is a plain field of :class:`BenchConfig`, so a run records exactly what it
measured (``dataclasses.asdict`` goes into the JSON) and a test can shrink any of them with
``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass

from luring.errors import LuringError

__all__ = ["BenchConfig", "preset", "MODES", "TARGETS", "LOWER_PRECISION_TARGETS",
           "AGREEMENT_MAX_POINTS", "AGREEMENT_MAX_POINTS_LOWER",
           "DEMO_MAX_SECONDS", "DEMO_MAX_BYTES"]

MODES = ("full", "quick", "tiny")

#: ratio name → (contender, baseline, minimum ratio of throughputs contender / baseline).
#: ``None`` = reported without a pass/fail target.
TARGETS: dict[str, tuple[str, str, float | None]] = {
    "pgd_vs_loop": ("pgd", "bare_loop", 0.9),
    "mim_vs_loop": ("mim", "bare_loop", 0.9),
    "dimti_vs_loop": ("dimti", "bare_loop", 0.9),
    "nifgsm_vs_loop": ("nifgsm", "bare_loop", 0.9),
    "sinifgsm_vs_loop": ("sinifgsm", "bare_loop", 0.9),
    "vmifgsm_vs_loop": ("vmifgsm", "bare_loop", 0.9),
    "vnifgsm_vs_loop": ("vnifgsm", "bare_loop", 0.9),
    "sia_vs_loop": ("sia", "bare_loop", 0.9),
    "bsr_vs_loop": ("bsr", "bare_loop", 0.9),
    "spsa_vs_forward": ("spsa", "bare_forward_spsa", 0.8),
    "eco_vs_forward": ("eco", "bare_forward_eco", 0.8),
    "train_p_vs_step": ("train_p", "bare_step_p", 0.9),
    "train_m_vs_step": ("train_m", "bare_step_m", None),
    "t_vs_m_fwd_bwd": ("bare_fwd_bwd_t", "bare_fwd_bwd_m", None),
    "mimw_batched_vs_one_at_a_time": ("mimw_batched", "mimw_one_at_a_time", None),
    "mim_vs_torchattacks": ("mim", "torchattacks_mifgsm", 1.0),
    "mim_vs_art": ("mim", "art_mim", 1.0),
    # against the bare loops in the best precision (what the hardware gives; the ceiling)
    "mim_vs_best_loop": ("mim", "bare_loop_best", 0.9),
    "dimti_vs_best_loop": ("dimti", "bare_loop_best", 0.9),
    "sia_vs_best_loop": ("sia", "bare_loop_best", 0.9),
    "bsr_vs_best_loop": ("bsr", "bare_loop_best", 0.9),
    "train_p_vs_best_step": ("train_p", "bare_step_p_best", 0.9),
    "train_m_vs_best_step": ("train_m", "bare_step_m_best", None),
    "best_loop_vs_loop": ("bare_loop_best", "bare_loop", None),
    # luring's transfer attacks against torchattacks' float32 MIFGSM (issue: ≥ 3x with bf16)
    "dimti_vs_torchattacks": ("dimti", "torchattacks_mifgsm", 1.0),
    "nifgsm_vs_torchattacks": ("nifgsm", "torchattacks_mifgsm", 1.0),
    "sinifgsm_vs_torchattacks": ("sinifgsm", "torchattacks_mifgsm", 1.0),
    "vmifgsm_vs_torchattacks": ("vmifgsm", "torchattacks_mifgsm", 1.0),
    "vnifgsm_vs_torchattacks": ("vnifgsm", "torchattacks_mifgsm", 1.0),
}

#: Targets that apply instead when luring's contenders run in a lower precision (a CPU with
#: bf16 units, a GPU): float32 libraries and loops are then beaten by the precision itself.
#: With float32 (a CPU without bf16 units) the targets above hold: nothing slower than before.
LOWER_PRECISION_TARGETS: dict[str, float] = {
    "mim_vs_torchattacks": 3.0, "dimti_vs_torchattacks": 3.0, "nifgsm_vs_torchattacks": 3.0,
    "sinifgsm_vs_torchattacks": 3.0, "vmifgsm_vs_torchattacks": 3.0,
    "vnifgsm_vs_torchattacks": 3.0, "train_p_vs_step": 2.5, "train_m_vs_step": 2.0,
}

#: SPSA peak memory at the largest sample count / at the smallest: at most this.
SPSA_MEMORY_MAX_RATIO = 1.10
#: Library agreement: |success rate (ours) - success rate (theirs)| at most this many points.
AGREEMENT_MAX_POINTS = 1.0
#: The same when luring's MIM computes its gradients in a lower precision (another rounding
#: of the same attack; the issue's bound: within 2 points at n ≥ 512).
AGREEMENT_MAX_POINTS_LOWER = 2.0
#: ``luring demo``: at most 10 minutes and 3 GB (10^9 bytes) peak resident memory.
DEMO_MAX_SECONDS = 600.0
DEMO_MAX_BYTES = 3_000_000_000


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures. Sizes are images per batch unless said otherwise.

    ``memory``: ``subprocess`` (each contender once in a fresh interpreter: clean peaks) or
    ``inprocess`` (peak RSS during the contender's warm-up run, in this process: cheaper,
    but memory the allocator kept from earlier contenders is not seen again)."""

    mode: str
    reps: int                       # timed repetitions of every contender (interleaved)
    batch: int                      # gradient attacks, bare forward+backward, MIM comparison
    steps: int                      # iterations of each gradient-attack run
    passes: int = 4                 # forward+backward passes of each bare M / T run
    eps: float = 0.15               # l∞ bound of the gradient attacks
    alpha: float = 0.015            # their step size
    spsa_images: int = 8
    spsa_samples: int = 128
    spsa_chunk: int = 128
    spsa_steps: int = 2
    eco_images: int = 16
    eco_queries: int = 300          # per image
    eco_block: int = 2              # paper, MNIST
    train_images: int = 256         # images of each training-throughput run
    p_epochs: int = 4               # epochs of the P (luring) training run
    p_batch: int = 64               # paper and quick profile, MNIST
    m_epochs: int = 2
    m_batch: int = 28               # paper, MNIST
    target_train_images: int = 0    # M for the agreement check: 0 = all of mnist-5k's train
    agree_images: int = 512         # images of the library agreement check
    agree_steps: int = 10           # MIM iterations of the agreement check
    memory: str = "subprocess"
    spsa_memory_samples: tuple[int, ...] = (128, 256, 512, 1024)
    spsa_memory_images: int = 8
    spsa_memory_chunk: int = 128
    spsa_memory_steps: int = 1      # at the largest sample count; smaller counts run more
                                    # steps so every child makes the same number of forwards
    libraries: bool = True          # compare with torchattacks / ART when installed
    warmup: bool = True             # one untimed run of each contender before the reps
    train_target: bool = True       # train M (else random weights; agreement not meaningful)
    threads: int | None = None      # torch intra-op threads (None: torch's default)
    precision: str = "auto"         # luring's contenders (luring.precision; bare: fp32/best)
    peak: bool = True               # time the machine's peak matmul rate per precision

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LuringError(f"unknown benchmark mode {self.mode!r}; use {', '.join(MODES)}")
        if self.memory not in ("subprocess", "inprocess"):
            raise LuringError("memory must be 'subprocess' or 'inprocess'")
        for name in ("reps", "batch", "steps", "spsa_images", "spsa_steps", "eco_images",
                     "eco_queries", "train_images", "p_batch", "m_batch", "agree_images"):
            if getattr(self, name) < 1:
                raise LuringError(f"benchmark setting {name} must be ≥ 1")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise LuringError(f"unknown precision {self.precision!r}; use auto, fp32, bf16 or "
                              "fp16")
        if self.spsa_samples % 2 or any(s % 2 for s in self.spsa_memory_samples):
            raise LuringError("SPSA sample counts must be even")


def preset(mode: str) -> BenchConfig:
    """The sizes of ``full`` (about 17 minutes on a 2-core CPU), ``quick`` (well under a minute)
    or ``tiny`` (seconds; the CI smoke test)."""
    if mode == "full":
        return BenchConfig(mode="full", reps=5, batch=128, steps=10)
    if mode == "quick":
        return BenchConfig(mode="quick", reps=2, batch=32, steps=3, passes=3, spsa_images=2,
                           spsa_steps=1, eco_images=8, eco_queries=100, train_images=128,
                           p_epochs=2, m_epochs=1, target_train_images=500, agree_images=64,
                           agree_steps=10, memory="inprocess",
                           spsa_memory_samples=(128, 1024), spsa_memory_images=2)
    if mode == "tiny":
        return BenchConfig(mode="tiny", reps=2, batch=4, steps=2, passes=2, spsa_images=1,
                           spsa_samples=8, spsa_chunk=4, spsa_steps=1, eco_images=2,
                           eco_queries=20, train_images=16, p_epochs=1, p_batch=8, m_epochs=1,
                           m_batch=8,
                           agree_images=4, agree_steps=2, memory="inprocess",
                           spsa_memory_samples=(4, 8), spsa_memory_images=1,
                           spsa_memory_chunk=4, train_target=False, threads=1)
    raise LuringError(f"unknown benchmark mode {mode!r}; use {', '.join(MODES)}")
