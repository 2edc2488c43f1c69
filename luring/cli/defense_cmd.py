"""``luring train-defense``, ``luring detect`` and ``luring export``: the defense stage's
commands. Labels of the training split are handed to the trainer only for ``--method stack``
and ``--method trapdoor`` (a model of M's architecture trained from scratch on labelled images
with a trapdoor per label; paper appendix I); the test split is loaded before training (a
missing split fails early) and used only for the clean evaluation written at the end."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from luring.cli.common import add_common, fraction, nonneg_int, pos_float, pos_int

__all__ = ["register"]


def _open_unit(text: str) -> float:
    """A number strictly between 0 and 1 (a false-alarm target)."""
    v = pos_float(text)
    if not v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {v}")
    return v


def register(subparsers) -> None:
    """Add the defense commands to the ``luring`` parser."""
    from luring.defense.scores import SCORES
    from luring.defense.settings import METHODS, PROFILES

    p = subparsers.add_parser(
        "train-defense", help="train the luring component P (or a baseline) for a target",
        description="Train the defense component P for a trained target M (Algorithm 1 for "
        "--method luring) on the data set's unlabelled training images, keep the checkpoint "
        "whose T = M∘P agrees most with M on held-out images (no labels), evaluate on the test "
        "split and write the defense directory. Defaults: the paper's settings for the data "
        "set family (--profile paper) or the short demo settings (--profile quick).")
    p.add_argument("--target", required=True, help="target directory (model.safetensors + "
                   "model.json, from `luring train-target`)")
    p.add_argument("--method", default="luring", choices=(*METHODS, TRAPDOOR),
                   help="luring (default), ce, auto, stack (reads labels) or trapdoor (Shan et "
                   "al. 2019: a model of M's architecture trained from scratch with a trapdoor "
                   "per label; reads labels)")
    p.add_argument("--lambda", dest="lam", type=pos_float, default=None,
                   help="luring coefficient λ > 0 (default 1 for MNIST/SVHN, 0.15 for CIFAR10)")
    p.add_argument("--dataset", default=None,
                   help="data set (default: the one the target was trained on)")
    p.add_argument("--data-dir", default=None, help="data root (default $LURING_DATA or cache)")
    p.add_argument("--profile", default="paper", choices=PROFILES,
                   help="paper (appendix B/C settings, default) or quick (demo settings)")
    p.add_argument("--epochs", type=pos_int, default=None, help="training epochs (≥ 1)")
    p.add_argument("--batch-size", type=pos_int, default=None, help="batch size")
    p.add_argument("--lr", type=pos_float, default=None,
                   help="peak learning rate (the schedule is rescaled)")
    p.add_argument("--dropout", type=fraction(0.0, 1.0, high_open=True), default=None,
                   help="dropout of P, in [0, 1)")
    p.add_argument("--val-fraction", type=fraction(0.0, 0.5), default=None,
                   help="held-out part of the unlabelled training images used for the "
                   "label-free checkpoint selection (default 0.1; 0 keeps the last epoch)")
    p.add_argument("--eval-every", type=nonneg_int, default=None,
                   help="steps between selection evaluations (default 0: once per epoch)")
    t = p.add_argument_group("trapdoor (--method trapdoor only; --epochs: trapdoor epochs)")
    t.add_argument("--clean-epochs", type=nonneg_int, default=None,
                   help="epochs on clean images before the trapdoor phase (paper profile: 10 "
                   "for MNIST, 20 for SVHN/CIFAR10; quick: 0)")
    t.add_argument("--inject-ratio", type=fraction(0.0, 1.0), default=None,
                   help="share of training images replaced by a trapdoored copy (default 0.5)")
    t.add_argument("--mask-ratio", type=fraction(0.0, 1.0), default=None,
                   help="transparency of the triggers (default 0.1)")
    t.add_argument("--false-alarm", type=fraction(0.0, 0.5), default=None,
                   help="detector's false-alarm target on clean held-out images (default 0.05)")
    p.add_argument("--force", action="store_true",
                   help="replace the defense already in --out (only a defense directory is "
                   "ever replaced; files of yours in it are kept)")
    p.add_argument("--allow-weak", action="store_true",
                   help="publish the defense even when T agrees with M on fewer than half of "
                   "the held-out images (refused by default), with a warning")
    add_common(p, out_help="defense directory to write")
    p.set_defaults(handler=_train)

    p = subparsers.add_parser(
        "detect", help="classify inputs with T and flag the suspicious ones",
        description="For each input image print one JSON line {input, index, t_label, "
        "m_label, score, flagged, rule, threshold}: T's label (the answer), M's label, the "
        "detection score (higher = more suspicious, in [0, 1]) and whether it is above the "
        "operating point's threshold. Default: the operating point stored with the defense "
        "(chosen on held-out unlabelled training images); --rule paper flags exactly when T "
        "and M disagree (section 4.1). A trapdoor defense prints {input, index, label, score, "
        "flagged} instead: its model's label, the cosine similarity with that label's "
        "trapdoor signature and whether it is above the stored threshold. Inputs: PNG/JPEG "
        "files of the model's size, or .npy/.npz arrays (N, C, H, W) or (N, H, W), uint8 "
        "0-255 or float in [0, 1].")
    p.add_argument("--defense", required=True, help="defense directory")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or array files")
    p.add_argument("--rule", choices=SCORES, default=None,
                   help="detection score: paper (T and M disagree), tv (total variation), js "
                   "(Jensen-Shannon distance), pm (1 - M's probability of T's label); default: "
                   "the stored one (a rule other than the stored one is recalibrated for the "
                   "stored false-alarm target)")
    p.add_argument("--fpr", type=_open_unit, default=None,
                   help="target false-alarm rate F in (0, 1): recalibrate the threshold on the "
                   "defense's stored calibration images (never on the inputs)")
    p.add_argument("--confidence", type=_confidence, default=None,
                   help="recalibrate so that the false-alarm rate on new clean images is at "
                   "most the target with this probability C in (0, 1), or 'none' for the plain "
                   "held-out quantile (default: the stored operating point's, 0.9)")
    p.add_argument("--batch-size", type=pos_int, default=500, help="inference batch size")
    add_common(p, out=False)
    p.set_defaults(handler=_detect)

    p = subparsers.add_parser(
        "export", help="export the augmented model T alone (ONNX or TorchScript)",
        description="Export T = M∘P, the model to deploy where attackers can reach it; M is "
        "not included. ONNX needs `pip install luring[export]`.")
    p.add_argument("--defense", required=True, help="defense directory")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"], dest="fmt",
                   help="onnx or torchscript")
    p.add_argument("--force", action="store_true", help="replace the file already at --out")
    add_common(p, out_help="file to write")
    p.set_defaults(handler=_export)


def _confidence(text: str) -> float | str:
    """``--confidence``: 'none' (the plain held-out quantile) or a probability in (0, 1)."""
    return "none" if text.strip().lower() == "none" else _open_unit(text)


def _confidence_of(args: argparse.Namespace) -> float | str | None:
    """``--confidence`` as :meth:`Defense.operating_point` takes it: absent → "stored",
    'none' → None."""
    c = args.confidence
    return "stored" if c is None else None if c == "none" else c


TRAPDOOR = "trapdoor"
#: Options of the other methods that mean nothing for a trapdoored model, and the reverse.
_NOT_TRAPDOOR = (("lam", "--lambda"), ("dropout", "--dropout"), ("eval_every", "--eval-every"))
_TRAPDOOR_ONLY = (("clean_epochs", "--clean-epochs"), ("inject_ratio", "--inject-ratio"),
                  ("mask_ratio", "--mask-ratio"), ("false_alarm", "--false-alarm"))


def _train(args: argparse.Namespace) -> int:
    from luring import distributed
    from luring.errors import LuringError

    target_dir = Path(args.target)
    if not target_dir.is_dir():
        raise LuringError(f"target directory {target_dir} does not exist; train one with "
                          "`luring train-target --out DIR`")
    for key, flag in _NOT_TRAPDOOR if args.method == TRAPDOOR else _TRAPDOOR_ONLY:
        if getattr(args, key) is not None:
            raise LuringError(f"{flag} does not apply to --method {args.method}; drop it")
    if args.lam is not None and args.method != "luring":
        raise LuringError(f"--lambda applies to --method luring only, not {args.method}")
    with distributed.process_group(args.device) as device:
        return _train_on(args, target_dir, device)


def _train_on(args: argparse.Namespace, target_dir: Path, device) -> int:
    """``train-defense`` on ``device``; under torchrun every rank runs this together (one
    DistributedDataParallel training of P), rank 0 alone writes and prints."""
    import luring.data as ldata
    from luring import distributed
    from luring.defense.build import AGREEMENT_FLOOR, build_defense
    from luring.defense.publish import OutputClaim
    from luring.defense.settings import defense_settings, resolve_settings
    from luring.errors import LuringError
    from luring.models import load_checkpoint

    target, tmeta = load_checkpoint(target_dir, "model", device=device)
    dataset = args.dataset or tmeta.get("dataset")
    if not dataset:
        raise LuringError(f"{target_dir}/model.json names no data set; pass --dataset")
    spec = ldata.get_spec(dataset)
    if tuple(tmeta["input_shape"]) != tuple(spec.shape):
        raise LuringError(f"the target takes {tuple(tmeta['input_shape'])} images but {dataset} "
                          f"has {spec.shape}; pass the --dataset it was trained on")
    if args.method == TRAPDOOR:
        if tmeta.get("factory"):  # a user's architecture (luring.models.user)
            raise LuringError(f"--method trapdoor trains the paper's architectures (mnist-, "
                              f"svhn-, cifar10-target); M's is your own "
                              f"({tmeta['architecture']}): choose another --method")
        if distributed.world_size() > 1:
            raise LuringError("--method trapdoor trains in one process; start it without "
                              "torchrun")
        return _train_trapdoor(args, target_dir, tmeta, dataset, spec, device)
    settings = resolve_settings(
        defense_settings(spec.family, args.method, args.profile, dataset=spec.name),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, dropout=args.dropout,
        val_fraction=args.val_fraction, eval_every=args.eval_every, **{"lambda": args.lam})
    # fail now, not after training, if --out is taken, refused or unwritable (rank 0 claims
    # and writes it; an error is raised on every rank)
    claim = distributed.everywhere(
        lambda: OutputClaim(args.out, force=args.force).acquire() if distributed.is_main()
        else None)
    stage = claim.stage if claim is not None else None
    try:
        x_train, y_train, test = _splits(dataset, spec, args.data_dir)
        config = {"command": "train-defense", "target": str(target_dir), "method": args.method,
                  "dataset": dataset, "data_dir": args.data_dir, "profile": args.profile,
                  "seed": args.seed, "device": str(device), "settings": settings,
                  "processes": distributed.world_size()}
        out, trained, clean = build_defense(
            args.out, target, tmeta, x_train, test, method=args.method, settings=settings,
            family=spec.family, dataset=dataset, seed=args.seed, device=device, labels=y_train,
            target_dir=str(target_dir.resolve()), config=config, stage=stage,
            desc=f"train-defense {args.method}", parallel=True,
            agreement_floor=AGREEMENT_FLOOR,
            on_weak=(lambda msg: sys.stderr.write(f"luring: WARNING: {msg}\n"))
            if args.allow_weak else None)
    finally:
        if claim is not None:
            claim.release()
    if not distributed.is_main():
        return 0
    print(f"wrote {out}: {args.method} on {dataset} (n = {clean['n']} test images): "
          f"accuracy M {100 * clean['accuracy_m']:.1f}%, T {100 * clean['accuracy_t']:.1f}%, "
          f"agreement {100 * clean['agreement']:.1f}%, false alarms "
          f"{100 * clean['false_alarm_rate']:.1f}%; trained in {trained.seconds:.1f} s, kept "
          f"epoch {trained.selection.get('epoch')}")
    return 0


def _splits(dataset: str, spec, data_dir: str | None):
    """(training images, training labels, (test images, test labels)): in memory, or for
    image folders (``imagenet``, ``imagefolder...``) lazy views read from disk a batch at a
    time (:class:`luring.data.lazy.LazyImages`; labels from the file lists)."""
    import os

    import luring.data as ldata
    from luring.data.lazy import LazyImages

    if spec.open is None:
        return (*ldata.load(dataset, "train", data_dir), ldata.load(dataset, "test", data_dir))
    views = []
    for split in ("train", "test"):
        ds = ldata.open_dataset(dataset, split, data_dir)
        workers = 0 if len(ds) < 512 else min(4, max(1, (os.cpu_count() or 2) - 1))
        views.append(LazyImages(ds, workers=workers))
    return views[0], views[0].labels(), (views[1], views[1].labels())


def _train_trapdoor(args: argparse.Namespace, target_dir: Path, tmeta: dict, dataset: str,
                    spec, device) -> int:
    """``train-defense --method trapdoor``: a model of M's architecture (M's weights unused)
    trained from scratch with a trapdoor per label, its signatures and detector."""
    import luring.data as ldata
    from luring.defense.publish import OutputClaim
    from luring.defense.trapdoor import resolve_trapdoor_settings, trapdoor_settings
    from luring.defense.trapdoor_train import build_trapdoor

    settings = resolve_trapdoor_settings(
        trapdoor_settings(spec.family, args.profile), architecture=tmeta["architecture"],
        trap_epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        val_fraction=args.val_fraction, clean_epochs=args.clean_epochs,
        inject_ratio=args.inject_ratio, mask_ratio=args.mask_ratio,
        false_alarm=args.false_alarm)
    # fail now, not after training, if --out is taken, refused or unwritable
    claim = OutputClaim(args.out, force=args.force).acquire()
    try:
        x_train, y_train = ldata.load(dataset, "train", args.data_dir)
        test = ldata.load(dataset, "test", args.data_dir)
        config = {"command": "train-defense", "target": str(target_dir), "method": TRAPDOOR,
                  "dataset": dataset, "data_dir": args.data_dir, "profile": args.profile,
                  "seed": args.seed, "device": str(device), "settings": settings}
        out, trapped, clean = build_trapdoor(
            args.out, x_train, y_train, test, settings=settings, family=spec.family,
            dataset=dataset, classes=list(spec.classes), seed=args.seed, device=device,
            config=config, stage=claim.stage)
    finally:
        claim.release()
    cal = trapped.meta["calibration"]

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    print(f"wrote {out}: trapdoor on {dataset} (n = {clean['n']} test images): accuracy "
          f"{pct(clean['accuracy'])}, trapdoor success {pct(clean['trapdoor_success'])} (worst "
          f"label {pct(clean['trapdoor_success_min'])}), clean false alarms "
          f"{pct(clean['false_alarm_rate'])} (held-out {pct(cal['false_alarm_rate'])}, target "
          f"{pct(cal['false_alarm_target'])}); trained in "
          f"{trapped.meta['training_seconds']:.1f} s")
    return 0


def _detect_trapdoor(args: argparse.Namespace) -> int:
    """``luring detect`` on a trapdoor directory: one JSON line {input, index, label, score,
    flagged} per input (the trapdoored model's label, the cosine similarity with that label's
    signature, and score > the stored threshold)."""
    from luring.defense import load
    from luring.defense.inputs import read_inputs
    from luring.errors import LuringError

    for value, flag in ((args.rule, "--rule"), (args.fpr, "--fpr"),
                        (args.confidence, "--confidence")):
        if value is not None:
            raise LuringError(f"{flag} does not apply to a trapdoor defense (its threshold is "
                              "the stored one); drop it")
    trapped = load(args.defense, device=args.device)  # a trapdoored model
    for name, images in read_inputs(args.inputs, trapped.input_shape):
        det = trapped.detect(images, batch_size=args.batch_size)
        for i in range(len(images)):
            sys.stdout.write(json.dumps({"input": name, "index": i,
                                         "label": int(det.labels[i]),
                                         "score": float(det.scores[i]),
                                         "flagged": bool(det.flagged[i])}) + "\n")
    sys.stdout.flush()
    return 0


def _detect(args: argparse.Namespace) -> int:
    from luring.defense import defense_method, load
    from luring.defense.inputs import read_inputs

    if defense_method(args.defense) == TRAPDOOR:
        return _detect_trapdoor(args)
    defense = load(args.defense, device=args.device, augmented=True)
    confidence = _confidence_of(args)
    op = defense.operating_point(args.rule, args.fpr, confidence)  # fails before any input
    batches = read_inputs(args.inputs, defense.input_shape)
    if op.get("note"):  # after the inputs: an error stays a single line
        sys.stderr.write(f"luring: note: {op['note']}\n")
    for name, images in batches:
        det = defense.detect(images, batch_size=args.batch_size, rule=op["rule"],
                             fpr=args.fpr, confidence=confidence)
        for i in range(len(images)):
            sys.stdout.write(json.dumps({"input": name, "index": i,
                                         "t_label": int(det.t_label[i]),
                                         "m_label": int(det.m_label[i]),
                                         "score": float(det.score[i]),
                                         "flagged": bool(det.flagged[i]),
                                         "rule": det.rule,
                                         "threshold": det.threshold}) + "\n")
    sys.stdout.flush()
    return 0


def _export(args: argparse.Namespace) -> int:
    from luring.defense import load
    from luring.defense.export import export_augmented
    from luring.errors import LuringError

    out = Path(args.out)
    if out.is_dir():
        raise LuringError(f"--out {out} is a directory; give the file to write, e.g. "
                          f"{out / ('t.onnx' if args.fmt == 'onnx' else 't.pt')}")
    if out.exists() and not args.force:
        raise LuringError(f"--out {out} already exists; pass --force to replace it, or choose "
                          "another --out")
    defense = load(args.defense, device="cpu", augmented=True)  # T = M∘P
    path = export_augmented(defense, args.fmt, args.out)
    print(f"wrote {path}: T = M∘P ({defense.method}) as {args.fmt}, input "
          f"(N, {', '.join(map(str, defense.input_shape))})")
    return 0
