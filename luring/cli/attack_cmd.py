"""``luring attack``: craft adversarial examples against a saved model or defense.

    luring attack --source DIR --attack NAME --eps E [attack parameters] --images N
                  [--loss ce|margin --kappa K --bpda]
                  [--dataset D --data-dir ROOT] --out DIR [--seed S --device D --precision P]
                  [--chunk C --batch-size B]

The source is a target directory (``model.json``: the model M) or a defense directory
(``defense.json``: the augmented model T). The first N test images of the source's data set
are attacked (untargeted, against the source's own predictions, as the paper's authors did)
and ``--out`` receives ``adversarial.safetensors`` (x, x_adv, y, pred_clean, pred_adv) and
``attack.json`` (attack, resolved parameters, counts, success rate, wall time, versions).
``--n`` is an alias of ``--images`` (torchrun's parser rejects ``--n`` as an abbreviation).
Gradient attacks take ``--loss`` / ``--kappa`` and ``--bpda`` (gradients through the
source's saturating layers by the straight-through estimate; success is still judged on the
source itself).

Work runs in fixed chunks of ``--chunk`` images (default: 128 on a CPU, 1,024 on a GPU;
:func:`luring.attacks.base.default_chunk`) at fixed offsets 0, C, 2C, ... of the attacked
images, ``--batch-size`` images per call (default one chunk; a multiple of the chunk keeps
the chunk boundaries, so the results do not depend on it). Under ``torchrun
--nproc_per_node=K -m luring attack ...`` the chunks are split in contiguous blocks over the
K processes; each attacks its block with the seeds, chunks and ``start_index`` a single
process uses for it, rank 0 gathers and writes: the outputs are one process's, byte for byte
(``wall_time_s`` apart: the slowest block's), on any CPU, since every image meets the same
chunk shape. Nothing is resumable: a run that stops writes nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from luring import distributed
from luring.attacks import ATTACKS, LOSSES, attack_parameters, bpda, create
from luring.attacks.base import default_chunk
from luring.cli.common import (
    LuringParser,
    add_common,
    nonneg_float,
    nonneg_int,
    pos_float,
    pos_int,
    unit_float,
)
from luring.errors import LuringError
from luring.experiments.profiles import ECO_BLOCK, L2_BOUND
from luring.utils import (
    atomic_write_bytes,
    atomic_write_json,
    ensure_dir,
    progress,
    versions,
)

__all__ = ["register", "run_attack"]

# option dest → (type, help); passed to the attack only when given
ATTACK_OPTIONS: dict[str, tuple[Any, str]] = {
    "steps": (nonneg_int, "iterations (gradient attacks, SPSA, CW)"),
    "alpha": (pos_float, "step size (gradient attacks; an l2 length for mim-l2)"),
    "mu": (None, "momentum decay (mim family, ni/si-ni/vmi/vni-fgsm; paper 1.0)"),
    "p": (unit_float, "input-diversity probability (dim, dim-ti; optional DI for the "
                      "ni/si-ni/vmi/vni-fgsm)"),
    "kernel_size": (pos_int, "TI kernel size (mim-ti, dim-ti; paper searched 3, 5, 10, 15; "
                             "optional TI for the ni/si-ni/vmi/vni-fgsm)"),
    "scales": (pos_int, "si-ni-fgsm: scale copies x/2^i (default 5)"),
    "neighbors": (pos_int, "vmi/vni-fgsm: neighbours sampled for the variance (default 20)"),
    "beta": (None, "vmi/vni-fgsm: neighbourhood radius in units of eps (default 1.5)"),
    "num_copies": (pos_int, "sia, bsr: transformed copies per iteration (default 20, their "
                            "papers')"),
    "num_block": (pos_int, "sia, bsr: blocks per image side (default 3 for sia, 2 for bsr)"),
    "max_angle": (nonneg_float, "bsr: largest block rotation in degrees (default 24; 0 = "
                                "shuffle only)"),
    "loss": (None, "loss of the gradient attacks: ce (default, the paper's) or margin "
                   "(Carlini-Wagner logit margin)"),
    "kappa": (None, "margin loss: confidence cap kappa ≥ 0 (default 0)"),
    "eps_l2": (pos_float, "l2 bound (mim-l2; default 30 on MNIST, 2 otherwise)"),
    "samples": (pos_int, "SPSA evaluations per iteration, even (paper 128)"),
    "delta": (pos_float, "SPSA finite-difference radius (paper 0.01)"),
    "lr": (pos_float, "learning rate (SPSA, CW; paper 0.1)"),
    "chunk_size": (pos_int, "evaluations per forward chunk (SPSA per image, ECO images)"),
    "max_queries": (pos_int, "ECO query budget per image (paper 20000)"),
    "block_size": (pos_int, "ECO initial block size (default 2 MNIST, 8 SVHN, 4 CIFAR10)"),
    "early_stop": (bool, "ECO: stop an image at its first success"),
    "binary_steps": (pos_int, "CW binary-search steps (paper 10)"),
    "const": (pos_float, "CW initial constant (paper 0.5)"),
}


def _loss_name(text: str) -> str:
    if text not in LOSSES:
        raise argparse.ArgumentTypeError(f"unknown loss {text!r}; choose ce or margin")
    return text


_TYPES: dict[str, Any] = {"loss": _loss_name}


def _attack_name(text: str) -> str:
    if text not in ATTACKS:
        raise argparse.ArgumentTypeError(
            f"unknown attack {text!r}; choose one of {', '.join(ATTACKS)}")
    return text


def register(subparsers: argparse._SubParsersAction) -> LuringParser:
    """Add the ``attack`` command."""
    p = subparsers.add_parser(
        "attack", help="craft adversarial examples against a saved model or defense",
        description="Craft adversarial examples against a target (model.json) or a defense "
                    "(defense.json; attacks T = M∘P) on the first N test images; writes "
                    "adversarial.safetensors and attack.json to --out.")
    p.add_argument("--source", required=True, metavar="DIR",
                   help="target directory (model.json) or defense directory (defense.json)")
    p.add_argument("--attack", required=True, type=_attack_name, metavar="NAME",
                   help=f"one of {', '.join(ATTACKS)}")
    p.add_argument("--eps", required=True, type=unit_float,
                   help="l∞ bound in [0, 1] pixel units (CW: an optional cap, 1 = none)")
    p.add_argument("--images", "--n", dest="images", required=True, type=pos_int, metavar="N",
                   help="attack the first N test images (--n is an alias)")
    p.add_argument("--dataset", default=None, help="data set (default: the source's)")
    p.add_argument("--data-dir", default=None, metavar="ROOT", help="data root directory")
    p.add_argument("--chunk", type=pos_int, default=None,
                   help="images per batched pass, cut at fixed offsets (default 128 on a CPU, "
                        "1024 on a GPU; $LURING_CHUNK); part of what determines the results")
    p.add_argument("--batch-size", type=pos_int, default=None,
                   help="images per call (memory and progress; default one chunk): a multiple "
                        "of --chunk gives the same results")
    g = p.add_argument_group("attack parameters (defaults: the paper's)")
    for dest, (typ, text) in ATTACK_OPTIONS.items():
        flag = "--" + dest.replace("_", "-")
        if typ is bool:
            g.add_argument(flag, action="store_true", default=None, help=text)
        else:
            g.add_argument(flag, type=_TYPES.get(dest, typ or nonneg_float), default=None,
                           help=text)
    g.add_argument("--bpda", action="store_true",
                   help="gradient attacks: take gradients through bpda(source) (straight-"
                        "through sigmoid/tanh/hardtanh/clamp), judge success on the source")
    add_common(p, out_help="output directory for adversarial.safetensors and attack.json")
    p.set_defaults(handler=run_attack)
    return p


def _load_source(src: Path, device: torch.device) -> tuple[torch.nn.Module, str | None, str]:
    """(model, data set name from the sidecar, "defense"|"model")."""
    if not src.is_dir():
        raise LuringError(f"--source {src} is not a directory; pass a target directory "
                          "(model.json) or a defense directory (defense.json)")
    from luring.defense import defense_method, load

    if defense_method(src) is not None:  # a defense directory (an unreadable one: one line)
        defense = load(src, device, augmented=True)  # T = M∘P (a trapdoor one: one line)
        return defense.augmented, defense.meta.get("dataset"), "defense"
    if (src / "model.json").exists():
        from luring.models import load_checkpoint

        model, meta = load_checkpoint(src, "model", device=device)
        return model, meta.get("dataset"), "model"
    raise LuringError(f"{src} has neither model.json nor defense.json; train one with "
                      "`luring train-target` or `luring train-defense`")


def _resolve_params(args: argparse.Namespace, family: str | None) -> dict[str, Any]:
    given = {k: getattr(args, k) for k in ATTACK_OPTIONS if getattr(args, k) is not None}
    allowed = set(attack_parameters(args.attack))
    bad = sorted(k for k in given if k not in allowed)
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise LuringError(f"{flags} does not apply to {args.attack}; it takes "
                          + ", ".join("--" + k.replace("_", "-") for k in ATTACK_OPTIONS
                                      if k in allowed))
    if "kappa" in given and given.get("loss") != "margin":
        raise LuringError("--kappa is the margin loss's confidence; pass --loss margin with it")
    if args.bpda and "grad_model" not in allowed:
        raise LuringError(f"--bpda does not apply to {args.attack}; it needs a gradient "
                          "attack (fgsm, pgd, the mim family, ni/si-ni/vmi/vni-fgsm)")
    if args.attack == "mim-l2":
        given.setdefault("eps_l2", L2_BOUND.get(family or "", 2.0))
    if args.attack == "eco" and family in ECO_BLOCK:
        given.setdefault("block_size", ECO_BLOCK[family])
    return given


def run_attack(args: argparse.Namespace) -> int:
    """Handler of ``luring attack`` (one process, or every process under torchrun)."""
    with distributed.process_group(args.device) as device:
        return _attack(args, device)


def _prepare(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Load the source and the images, check them, build the attack (every rank; only rank 0
    creates ``--out``)."""
    from luring.data import get_spec, load

    out = ensure_dir(args.out) if distributed.is_main() else Path(args.out)
    src = Path(args.source)
    model, dataset, kind = _load_source(src, device)
    dataset = args.dataset or dataset
    if not dataset:
        raise LuringError(f"{src} does not name its data set; pass --dataset")
    spec = get_spec(dataset)
    x_all, y_all = load(dataset, "test", args.data_dir)
    if args.images > len(x_all):
        raise LuringError(f"--images {args.images} is larger than the {dataset} test set "
                          f"({len(x_all)} images); pass --images {len(x_all)} or less")
    x, y = x_all[:args.images].contiguous(), y_all[:args.images].contiguous()
    model.eval()
    try:
        with torch.no_grad():
            model(x[:1].to(device))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LuringError(f"the source model does not accept {dataset} images of shape "
                          f"{tuple(x.shape[1:])} ({first}); pass the right --dataset") from None
    params = _resolve_params(args, spec.family)
    if args.bpda:
        params["grad_model"] = bpda(model)
    atk = create(args.attack, model, eps=args.eps, seed=args.seed,
                 batch_size=args.chunk or default_chunk(device), **params)
    return {"out": out, "src": src, "model": model, "dataset": dataset, "kind": kind, "x": x,
            "y": y, "atk": atk}


def _attack_shard(s: dict[str, Any], lo: int, hi: int, step: int, device: torch.device,
                  name: str) -> dict[str, Any]:
    """Attack images ``lo .. hi-1`` in chunks of ``step`` starting at ``lo`` (a multiple of
    ``step``): the chunks, seeds and batches a single process uses for them."""
    from luring.models import predict_labels

    atk, model, x = s["atk"], s["model"], s["x"][lo:hi]
    counts = {"n_forward": 0, "n_backward": 0, "n_queries": 0}
    parts, extra = [], {"queries": [], "success": [], "l2": []}
    t0 = time.perf_counter()
    bar = progress(range(0, len(x), step), total=-(-len(x) // step), desc=f"attack {name}",
                   unit="chunk")
    for c in bar:
        parts.append(atk(x[c:c + step].to(device), start_index=lo + c).cpu())
        for k in counts:
            counts[k] += getattr(atk, k)
        for k in extra:
            if hasattr(atk, k):
                extra[k].append(getattr(atk, k).cpu())
    wall = time.perf_counter() - t0
    x_adv = torch.cat(parts) if parts else x.clone()
    c = atk.chunk  # float32 judgements, in the same fixed chunks (lo is a multiple)
    return {"x_adv": x_adv, "pred_clean": predict_labels(model, x, c, device),
            "pred_adv": predict_labels(model, x_adv, c, device), "counts": counts,
            "extra": {k: torch.cat(v) for k, v in extra.items() if v}, "wall": wall}


def _attack(args: argparse.Namespace, device: torch.device) -> int:
    s = distributed.everywhere(lambda: _prepare(args, device))
    out, x, y, atk, dataset = s["out"], s["x"], s["y"], s["atk"], s["dataset"]
    n, world = len(x), distributed.world_size()
    # the unit of work is the attack's chunk, at fixed offsets: each rank attacks a
    # contiguous block of chunks, --batch-size images per call
    chunk = atk.chunk
    step = args.batch_size or chunk
    c_lo, c_hi = distributed.shard_range(-(-n // chunk), distributed.rank(), world)
    lo, hi = min(c_lo * chunk, n), min(c_hi * chunk, n)
    mine = distributed.everywhere(lambda: _attack_shard(s, lo, hi, step, device, args.attack))
    idx = torch.arange(lo, hi)
    x_adv, pred_clean, pred_adv = (distributed.gather_tensors(mine[k], idx, n)
                                   for k in ("x_adv", "pred_clean", "pred_adv"))
    keys = sorted(set().union(*distributed.gather_objects(sorted(mine["extra"]))))
    extra = {k: distributed.gather_tensors(mine["extra"].get(k), idx, n) for k in keys}
    counts = dict(zip(mine["counts"], distributed.all_sum(list(mine["counts"].values())),
                      strict=True))
    wall = max(distributed.gather_objects(mine["wall"]))
    if not distributed.is_main():
        return 0  # rank 0 writes
    tensors = {"x": x, "x_adv": x_adv, "y": y.long(), "pred_clean": pred_clean,
               "pred_adv": pred_adv}
    atomic_write_bytes(out / "adversarial.safetensors",
                       st_save({k: v.contiguous() for k, v in tensors.items()}))
    fooled = pred_adv != pred_clean
    correct = pred_clean == y
    delta = (x_adv.double() - x.double()).flatten(1)
    record: dict[str, Any] = {
        "format": "luring-attack/1", "attack": args.attack, "class": type(atk).__name__,
        "params": atk.params(), "eps": args.eps, "n": n, "seed": args.seed,
        "dataset": dataset, "source": str(s["src"]), "source_kind": s["kind"],
        "device": device.type, "bpda": bool(args.bpda), "chunk": atk.chunk,
        "precision": atk.precision or "fp32",
        **counts,
        "success_rate": float(fooled.float().mean()),
        "success_rate_on_correct": float(fooled[correct].float().mean()) if correct.any()
        else None,
        "accuracy_clean": float(correct.float().mean()),
        "accuracy_adv": float((pred_adv == y).float().mean()),
        "linf_max": float(delta.abs().max()) if n else 0.0,
        "l2_mean": float(delta.norm(dim=1).mean()) if n else 0.0,
        "wall_time_s": wall, "versions": versions(),
    }
    for k, v in extra.items():
        record[k] = v.tolist()
    atomic_write_json(out / "attack.json", record)
    procs = f", {world} processes" if world > 1 else ""
    print(f"{args.attack} eps={args.eps:g} on {n} {dataset} test images: success rate "
          f"{record['success_rate']:.3f} on the source ({wall:.1f} s{procs}); wrote {out}")
    return 0
