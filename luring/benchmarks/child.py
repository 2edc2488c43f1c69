"""``python -m luring.benchmarks.child SPEC.json OUT.json``: run one contender once in a
fresh interpreter and write its peak memory, so that per-contender peaks do not mix.

SPEC holds ``config`` (a :class:`~luring.benchmarks.config.BenchConfig` as a dict),
``overrides`` (fields to replace), ``device``, ``seed``, ``target_state`` (a ``torch.save``
file of M's weights, or null for random weights), ``sizes`` (recorded forward batch sizes),
``threads`` (torch threads, as the parent's) and ``contender``. OUT gets
:func:`~luring.benchmarks.memory.measure_peak`'s dict plus ``seconds`` and ``work``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "config_from_dict"]


def config_from_dict(d: dict[str, Any]):  # noqa: ANN201 - BenchConfig (lazy import)
    """A :class:`BenchConfig` from its ``asdict`` form (lists back to tuples)."""
    from luring.benchmarks.config import BenchConfig

    names = {f.name for f in dataclasses.fields(BenchConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
    return BenchConfig(**kw)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    import torch

    from luring.benchmarks.env import build_env
    from luring.benchmarks.memory import measure_peak
    from luring.benchmarks.workloads import build_contender
    from luring.utils import atomic_write_json

    spec_path, out_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    cfg = dataclasses.replace(config_from_dict(spec["config"]),
                              **{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in spec.get("overrides", {}).items()})
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    state = None
    if spec.get("target_state"):
        state = torch.load(spec["target_state"], map_location="cpu", weights_only=True)
    device = torch.device(spec["device"])
    env = build_env(cfg, device, int(spec["seed"]), target_state=state,
                    sizes=spec.get("sizes") or {})
    contender = build_contender(spec["contender"], env)

    def call() -> tuple[float, float]:
        t0 = time.perf_counter()
        work = contender.run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, work

    (seconds, work), info = measure_peak(call)
    info.update(seconds=seconds, work=work, contender=contender.name)
    atomic_write_json(out_path, info)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
