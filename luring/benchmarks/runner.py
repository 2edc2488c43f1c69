"""``run_benchmark``: build the contenders, time them interleaved, measure memory, compare
with the other libraries, optionally time ``luring demo``, and assemble the result dict
(written as JSON by the CLI; see :func:`luring.benchmarks.report.evaluate_targets` for the
pass/fail list)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from luring import precision as prec
from luring.benchmarks import memory
from luring.benchmarks.config import LOWER_PRECISION_TARGETS, TARGETS, BenchConfig
from luring.benchmarks.env import Contender, Env, build_env
from luring.benchmarks.libraries import agreement, available
from luring.benchmarks.peak import fractions, matmul_peak, work_flops
from luring.benchmarks.report import evaluate_targets
from luring.benchmarks.timing import interleaved, ratio, run_interleaved, stats
from luring.benchmarks.workloads import CONTENDERS, build_contender
from luring.utils import atomic_write_json, resolve_device, versions

__all__ = ["run_benchmark", "environment", "measure_demo", "FORMAT"]

FORMAT = "luring-bench/1"
_INSTALL = {"torchattacks_mifgsm": "pip install --no-deps torchattacks",
            "art_mim": "pip install adversarial-robustness-toolbox"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Device, library versions, thread counts and CPU model of this run."""
    env: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": versions(), "libraries": available(),
        "rss_source": memory.rss_source(), "peak_source": memory.peak_rss()[1],
    }
    try:
        env["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _child_memory(env: Env, names: list[str], tmp: Path, log: Callable[[str], None],
                  overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Each contender once in a fresh interpreter (``luring.benchmarks.child``)."""
    state_path = tmp / "target.pt"
    if not state_path.exists():
        torch.save(env.target.state_dict(), state_path)
    jobs = []
    for key in names:
        name, ov = (key, {}) if overrides is None else (overrides[key]["contender"],
                                                        overrides[key]["overrides"])
        spec = {"config": dataclasses.asdict(env.cfg), "overrides": ov,
                "device": str(env.device), "seed": env.seed, "target_state": str(state_path),
                "sizes": env.sizes, "contender": name, "threads": torch.get_num_threads()}
        spec_path, out_path = tmp / f"{key}.spec.json", tmp / f"{key}.out.json"
        atomic_write_json(spec_path, spec)
        jobs.append((key, spec_path, out_path))
    # Peaks are per process, so children may run side by side (one per core): only their
    # run time, which is not reported here, depends on the others.
    workers = 1 if env.device.type == "cuda" else max(1, min(os.cpu_count() or 1, 4))
    log(f"memory: {', '.join(names)} (one fresh process each, {workers} at a time)")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(memory.child_measure, sp, op, timeout=1800)
                   for key, sp, op in jobs}
        return {key: f.result() for key, f in futures.items()}


def _spsa_scaling(env: Env, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """SPSA peak RSS as its sample count grows with a fixed chunk size, each in a fresh
    process; must stay flat."""
    c = env.cfg
    top = max(c.spsa_memory_samples)
    steps = {s: max(1, c.spsa_memory_steps * top // s) for s in c.spsa_memory_samples}
    keys = {f"spsa_{s}": {"contender": "spsa", "overrides": {
        "spsa_samples": s, "spsa_chunk": c.spsa_memory_chunk,
        "spsa_images": c.spsa_memory_images, "spsa_steps": steps[s]}}
        for s in c.spsa_memory_samples}
    res = _child_memory(env, list(keys), tmp, log, overrides=keys)
    rows = [res[k] for k in keys]
    peak = [r.get("peak_rss_mb") for r in rows]
    delta = [r.get("delta_mb") for r in rows]
    first, last = peak[0], peak[-1]
    return {
        "method": "one fresh process per sample count (up to one per core side by side; "
                  "peaks are per process); every child makes the same number of chunked "
                  "forward passes (fewer samples run proportionally more iterations), so "
                  "only the sample count differs: the heap of a process grows a little with "
                  "every large forward whatever the samples; peak = VmHWM of the child reset "
                  "just before the attack (the process RSS peak during SPSA); delta = that "
                  "peak minus the RSS just before; child_maxrss = os.wait4 ru_maxrss",
        "samples": list(c.spsa_memory_samples), "chunk_size": c.spsa_memory_chunk,
        "images": c.spsa_memory_images, "steps": [steps[s] for s in c.spsa_memory_samples],
        "peak_rss_mb": peak, "delta_mb": delta,
        "child_maxrss_mb": [r.get("maxrss_mb") for r in rows],
        "errors": [r["error"] for r in rows if "error" in r],
        "ratio_last_first": (last / first) if first and last else None,
        "delta_ratio_last_first": (delta[-1] / delta[0]) if delta[0] and delta[-1] else None,
    }


def measure_demo(device: torch.device, seed: int, log: Callable[[str], None],
                 timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``luring demo --out TMPDIR`` in a child process: wall time and the child's peak
    RSS (``os.wait4`` ru_maxrss)."""
    with tempfile.TemporaryDirectory(prefix="luring-bench-demo-") as tmp:
        log("running luring demo (about 10 minutes)")
        child_env = dict(os.environ, LURING_NO_PROGRESS="1")
        args = [sys.executable, "-m", "luring.cli.main", "demo", "--out", str(Path(tmp) / "run"),
                "--seed", str(seed), "--device", device.type]
        res = memory.run_child(args, timeout=timeout, env=child_env,
                               log_path=Path(tmp) / "demo.log")
        if res["returncode"] != 0:
            res["log_tail"] = (Path(tmp) / "demo.log").read_text(errors="replace")[-2000:]
    res["command"] = f"luring demo --out TMPDIR --seed {seed} --device {device.type}"
    return res


def _contender_names(cfg: BenchConfig, libs: dict[str, str | None]) -> tuple[list[str],
                                                                            dict[str, str]]:
    names = list(CONTENDERS)
    skipped: dict[str, str] = {}
    for name, version in libs.items():
        if not cfg.libraries:
            skipped[name] = "disabled in this configuration"
        elif version is None:
            skipped[name] = f"not installed ({_INSTALL[name]})"
        else:
            names.append(name)
    return names, skipped


def run_benchmark(cfg: BenchConfig, *, device: str | torch.device = "auto", seed: int = 0,
                  demo: bool = False, log: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
    """Run the benchmark described by ``cfg`` and return the JSON-able result.

    Keys: ``format``, ``mode``, ``config``, ``seed``, ``environment``, ``model``,
    ``contenders`` (raw seconds, work and throughput per repetition, their min / median /
    max), ``ratios`` (per-repetition ratios and their statistics, target, pass),
    ``interleaving`` (the order of every repetition and every timed run), ``memory``,
    ``agreement``, ``demo``, ``targets`` (pass/fail list), ``skipped``, ``seconds``.
    """
    say = log or (lambda m: print(m, file=sys.stderr))
    dev = resolve_device(device)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with prec.using(cfg.precision):  # the MIM-W grid's attacks read the process default
            return _run(cfg, dev, seed, demo, say)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchConfig, dev: torch.device, seed: int, demo: bool,
         say: Callable[[str], None]) -> dict[str, Any]:
    t_all = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    env = build_env(cfg, dev, seed, log=say)
    libs = available()
    names, skipped = _contender_names(cfg, libs)
    say(f"building {len(names)} contenders")
    contenders: list[Contender] = [build_contender(n, env) for n in names]
    inproc = cfg.memory == "inprocess"
    timing = run_interleaved(
        contenders, cfg.reps, dev, warmup=cfg.warmup or inproc, log=say,
        around_warmup=(lambda c, call: memory.measure_peak(call)[1]) if inproc else None)
    runs = timing["runs"]
    result: dict[str, Any] = {
        "format": FORMAT, "mode": cfg.mode, "config": dataclasses.asdict(cfg), "seed": seed,
        "started": started, "environment": environment(dev), "model": env.target_info,
        "skipped": skipped,
    }
    result["contenders"] = {
        c.name: {"group": c.group, "unit": c.unit, "description": c.description,
                 **runs[c.name], "stats": stats(runs[c.name]["throughput"]),
                 "seconds_stats": stats(runs[c.name]["seconds"]),
                 "cpu_throughput": [w / t if t > 0 else None for w, t in
                                    zip(runs[c.name]["work"], runs[c.name]["cpu_seconds"],
                                        strict=True)]} for c in contenders}
    result["precision"] = {"luring": env.precision, "best": env.best,
                           "requested": cfg.precision}
    result["ratios"] = {}
    for key, (a, b, target) in TARGETS.items():
        if env.precision != "fp32" and key in LOWER_PRECISION_TARGETS:
            target = LOWER_PRECISION_TARGETS[key]
        if a in runs and b in runs:
            per = ratio(runs, a, b)
            med = stats(per)["median"]
            result["ratios"][key] = {"contender": a, "baseline": b, "per_rep": per,
                                     "stats": stats(per), "target": target,
                                     "pass": None if target is None else bool(med >= target)}
    _loop_ratio(result, contenders, runs, cfg.reps)
    if cfg.peak:
        say("machine peak (matrix multiply) and the models' FLOPs")
        result["peak"] = _peak(env, dev, {c: result["contenders"][c]["stats"]["median"]
                                          for c in result["contenders"]})
    result["interleaving"] = {
        "scheme": "contenders that are compared form a group; every repetition runs every "
                  "group as a palindrome (A B C C B A) of an order rotated by one position per "
                  "repetition; a contender's throughput in a repetition is its work over its "
                  "time in both runs; ratios are taken within a repetition",
        "groups": timing["groups"], "orders": timing["orders"], "events": timing["events"],
        "interleaved": interleaved(timing["groups"], timing["orders"])}
    with tempfile.TemporaryDirectory(prefix="luring-bench-") as tmp:
        if inproc:
            mem = {"method": "in-process: peak RSS (VmHWM reset just before) during each "
                             "contender's first (warm-up) run, and its rise over the RSS just "
                             "before; memory the allocator kept from earlier contenders is "
                             "reused unseen, so deltas can under-count",
                   "contenders": timing["warmup"]}
        else:
            mem = {"method": "one fresh process per contender (python -m "
                             "luring.benchmarks.child; up to one per core side by side, "
                             "peaks are per process): peak_rss = VmHWM reset just before the "
                             "contender's single run; delta = peak_rss minus RSS just before "
                             "(the contender's own memory); maxrss = os.wait4 ru_maxrss of the "
                             "whole child (imports and setup included)",
                   "contenders": _child_memory(env, names, Path(tmp), say)}
        mem["spsa_scaling"] = _spsa_scaling(env, Path(tmp), say)
    result["memory"] = mem
    by_name = {c.name: c for c in contenders}
    if "mimw_batched" in by_name and "mimw_one_at_a_time" in by_name:
        fps = {n: by_name[n].notes.get("results", []) for n in ("mimw_batched",
                                                                 "mimw_one_at_a_time")}
        result["mimw_same_results"] = bool(fps["mimw_batched"]) and len(
            set(fps["mimw_batched"]) | set(fps["mimw_one_at_a_time"])) == 1
    lib_names = [n for n in names if n in libs]
    say("library agreement check" if lib_names else "agreement check (no library installed)")
    result["agreement"] = agreement(env, lib_names)
    result["demo"] = measure_demo(dev, seed, say) if demo else None
    result["targets"] = evaluate_targets(result)
    result["seconds"] = time.perf_counter() - t_all
    return result


def _peak(env: Env, dev: torch.device, medians: dict[str, float]) -> dict[str, Any]:
    """The machine's peak matmul GFLOP/s per precision, the FLOPs per unit of work and each
    contender's share of its precision's peak (:mod:`luring.benchmarks.peak`)."""
    mm = matmul_peak(dev)
    flops = work_flops(env.target, env.component, tuple(env.x_test.shape[1:]))
    return {"matmul_gflops": mm, "flops_per_image": flops,
            "contenders": fractions(medians, flops, mm, env.precision, env.best),
            "method": "peak: best of 5 timed n×n matrix products (n = 2,048 on a CPU, 8,192 "
                      "on a GPU) per precision, 2n³ FLOPs each; work: FlopCounterMode on one "
                      "forward+backward (to the input for attacks, to the weights for "
                      "training) per image"}


def _loop_ratio(result: dict[str, Any], contenders: list[Contender],
                runs: dict[str, dict[str, list[float]]], reps: int) -> None:
    """Add ``train_p_loop_vs_step`` (reported, no target): the trainer's optimisation loop
    alone (its own clock, without computing M's logits and building P) against the whole
    bare run (which does compute M's logits), per repetition: above 1 by what that
    one-time set-up costs, it shows the per-step loop itself adds nothing."""
    by_name = {c.name: c for c in contenders}
    if "train_p" not in by_name or "bare_step_p" not in runs:
        return
    loop = by_name["train_p"].notes.get("loop_seconds", [])[-2 * reps:]
    if len(loop) != 2 * reps:
        return
    work, base = runs["train_p"]["work"], runs["bare_step_p"]["throughput"]
    per = [(work[i] / (loop[2 * i] + loop[2 * i + 1])) / base[i] for i in range(reps)]
    result["ratios"]["train_p_loop_vs_step"] = {
        "contender": "train_p (optimisation loop only)", "baseline": "bare_step_p",
        "per_rep": per, "loop_seconds": loop, "stats": stats(per), "target": None,
        "pass": None}
