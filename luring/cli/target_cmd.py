"""``luring train-target``: train a target classifier M on a data set (paper appendix A),
optionally with PGD adversarial training, into a run directory. ``luring import-target``:
turn a user's own weights (safetensors or ``.pth``, e.g. torchvision's MobileNetV2 for
ImageNet, paper H.1) into a target directory of the same layout, with the test accuracy it
measures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from luring.cli.common import add_amp, add_common, nonneg_int, pos_float, pos_int, unit_float

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-target", help="train a target model M (paper appendix A)",
                       description="Train the paper's target architecture for a data set. "
                       "Writes model.safetensors + model.json, config.json, results.json and "
                       "report.md into --out.")
    p.add_argument("--dataset", default="mnist-5k", help="data set name (default mnist-5k)")
    p.add_argument("--data-dir", default=None, help="data root (default $LURING_DATA or cache)")
    p.add_argument("--arch", default=None, help="architecture (default: the data set's)")
    p.add_argument("--epochs", type=nonneg_int, default=None)
    p.add_argument("--batch-size", type=pos_int, default=None)
    p.add_argument("--lr", type=pos_float, default=None, help="Adam learning rate (all phases)")
    p.add_argument("--adv-train", action="store_true",
                   help="PGD adversarial training (paper H.2: MNIST ε 0.3, 40 steps; "
                   "SVHN/CIFAR10 ε 0.03, 10 steps of 0.008)")
    p.add_argument("--adv-eps", type=unit_float, default=None)
    p.add_argument("--adv-steps", type=nonneg_int, default=None)
    p.add_argument("--adv-step-size", type=unit_float, default=None)
    p.add_argument("--force", action="store_true", help="replace a model already in --out")
    add_amp(p)
    add_common(p, out_help="run directory to write the model into")
    p.set_defaults(handler=run)
    _register_import(sub)


_MOBILENETS = ("mobilenetv2", "imagenet-target")


def _register_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-target", help="turn your own weights into a target directory",
        description="Load a weights file into an architecture (built in, your own "
        "module:callable, torchvision:NAME, timm:NAME, or a TorchScript file), measure its "
        "test accuracy on the data set and write model.safetensors + model.json (with the "
        "accuracy and n, and how to rebuild the model), config.json, results.json and "
        "report.md into --out: a target directory for train-defense, attack and reproduce "
        "--target. Weights: .safetensors, or .pth/.pt read with torch.load(weights_only=True) "
        "(no code is unpickled). The model receives images in [0, 1]; --mean/--std put its "
        "normalisation inside. Example: torchvision's MobileNetV2 ImageNet weights with "
        "--dataset imagenet.")
    p.add_argument("--dataset", required=True,
                   help="data set name (e.g. imagenet, imagefolder, imagefolder-64x48)")
    p.add_argument("--data-dir", default=None, help="data root (default $LURING_DATA or cache); "
                   "for imagefolder the folder holding train/ and test/")
    p.add_argument("--arch", default=None, help="architecture (default: the data set's "
                   "target; mobilenetv2 for image folders; torchscript for a TorchScript "
                   "file): a registered name, module:callable (a factory or class in your "
                   "module, imported by name: put its folder on PYTHONPATH, e.g. PYTHONPATH=. "
                   "luring ...; called with in_channels/num_classes when it declares them), "
                   "torchvision:NAME or timm:NAME (when installed), or torchscript (--weights "
                   "is then a torch.jit.save file, loaded with torch.jit.load)")
    p.add_argument("--weights", required=True, help="weights file (.safetensors, .pth, .pt), "
                   "or a TorchScript file (.pt) for --arch torchscript")
    p.add_argument("--mean", type=_floats, default=None, metavar="M[,M...]",
                   help="the model expects normalised inputs: per-channel mean (one value, or "
                   "one per channel) on the [0, 1] scale, e.g. 0.485,0.456,0.406; images stay "
                   "in [0, 1] outside, a Normalize layer inside the stored model applies it")
    p.add_argument("--std", type=_floats, default=None, metavar="S[,S...]",
                   help="per-channel std (> 0) of the normalisation, e.g. 0.229,0.224,0.225 "
                   "(a model taking 0-255 pixels: --std 0.00392156862745098)")
    p.add_argument("--output-key", default=None, metavar="KEY",
                   help="the model returns a tuple, dict or object: take its entry KEY (an "
                   "index such as 0, or a key/attribute name such as logits) as the logits")
    p.add_argument("--image-size", default=None, metavar="HxW",
                   help="imagefolder only: the size images are read at (default 224x224)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="imagefolder only: 1 (grey) or 3 (RGB, default)")
    p.add_argument("--normalize", default=None, choices=["imagenet", "symmetric", "none"],
                   help="MobileNetV2 only: input normalisation inside the model: imagenet "
                   "(mean/std, what torchvision's weights expect; default), symmetric "
                   "([-1, 1], the paper's H.1 and Keras' weights) or none")
    p.add_argument("--images", type=pos_int, default=None,
                   help="measure the accuracy on a seeded random subset of N test images "
                   "(default: all)")
    p.add_argument("--batch-size", type=pos_int, default=64, help="evaluation batch size")
    p.add_argument("--workers", type=nonneg_int, default=0,
                   help="image-decoding worker processes (default 0: in this process)")
    p.add_argument("--force", action="store_true", help="replace a model already in --out")
    add_common(p, out_help="target directory to write")
    p.set_defaults(handler=run_import)


def _dataset_name(dataset: str, image_size: str | None, channels: int | None) -> str:
    """``dataset``, with ``--image-size``/``--channels`` folded into an imagefolder name."""
    from luring.data import get_spec, imagefolder_name
    from luring.errors import LuringError

    spec = get_spec(dataset)
    if image_size is None and channels is None:
        return dataset
    if spec.family != "imagefolder":
        raise LuringError(f"--image-size and --channels apply to imagefolder data sets, not "
                          f"{dataset} (its images are {'×'.join(map(str, spec.shape))})")
    h, w = spec.shape[1:]
    if image_size is not None:
        parts = image_size.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise LuringError(f"--image-size must be HxW, e.g. 64x48, got {image_size!r}")
        h, w = int(parts[0]), int(parts[1])
    name = imagefolder_name((channels or spec.shape[0], h, w))
    if dataset != "imagefolder" and name != dataset:
        raise LuringError(f"--dataset {dataset} and --image-size/--channels disagree; pass "
                          f"--dataset imagefolder with the options, or --dataset {name}")
    return name


def _floats(text: str) -> list[float]:
    """``--mean``/``--std``: comma-separated finite numbers."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}"
                                         ) from None
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def run_import(args: argparse.Namespace) -> int:
    from luring.data import get_spec
    from luring.errors import LuringError
    from luring.models import default_architectures
    from luring.models.adapt import parse_output_key
    from luring.models.importing import import_target
    from luring.models.scripted import TORCHSCRIPT, is_torchscript_file

    dataset = _dataset_name(args.dataset, args.image_size, args.channels)
    spec = get_spec(dataset)
    arch = args.arch or (TORCHSCRIPT if is_torchscript_file(args.weights) else
                         default_architectures(spec.family, spec.shape)[0])
    normalised = args.mean is not None or args.std is not None
    for name, values in (("--mean", args.mean), ("--std", args.std)):
        if values is not None and len(values) not in (1, spec.shape[0]):
            raise LuringError(f"{name} takes one value per channel of {dataset}'s images "
                              f"({spec.shape[0]}) or one for all, got {len(values)}")
    kwargs = {}
    if arch in _MOBILENETS:
        if normalised and args.normalize not in (None, "none"):
            raise LuringError("pass either --normalize or --mean/--std, not both")
        kwargs["normalize"] = args.normalize or ("none" if normalised else "imagenet")
    elif args.normalize is not None:
        raise LuringError(f"--normalize applies to MobileNetV2 ({', '.join(_MOBILENETS)}), "
                          f"not {arch}; use --mean/--std")
    key = parse_output_key(args.output_key) if args.output_key is not None else None
    info = import_target(dataset, args.weights, args.out, arch=arch, arch_kwargs=kwargs,
                         data_dir=args.data_dir, images=args.images, seed=args.seed,
                         device=args.device, batch_size=args.batch_size,
                         workers=args.workers, force=args.force, input_mean=args.mean,
                         input_std=args.std, output_key=key)
    print(f"test accuracy {info['test_accuracy']:.4f} (n={info['n_test']}) of {arch} on "
          f"{dataset} → {info['out']}")
    if info.get("warning"):
        sys.stderr.write(f"luring: WARNING: {info['warning']}\n")
    return 0


def run(args: argparse.Namespace) -> int:
    """Handler of ``luring train-target``; under torchrun every process trains its share of
    each batch (DistributedDataParallel) and rank 0 writes ``--out``."""
    from luring import distributed
    from luring.data import get_spec
    from luring.errors import LuringError
    from luring.models.train import target_settings, train_target_run
    from luring.utils import ensure_dir

    def prepare():
        spec = get_spec(args.dataset)
        if (Path(args.out) / "model.json").exists() and not args.force:
            raise LuringError(f"{args.out} already holds a model; pass --force to replace it "
                              "or choose another --out")
        if distributed.is_main():
            ensure_dir(args.out)
        if args.amp == "fp16" and device.type != "cuda":
            raise LuringError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
        return target_settings(
            spec.family, adv_train=args.adv_train, architecture=args.arch, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, adv_eps=args.adv_eps,
            adv_steps=args.adv_steps, adv_step_size=args.adv_step_size)

    with distributed.process_group(args.device) as device:
        settings = distributed.everywhere(prepare)
        _, info = train_target_run(args.dataset, args.out, settings, seed=args.seed,
                                   device=device, data_dir=args.data_dir, amp=args.amp,
                                   parallel=True)
        if distributed.is_main():
            procs = distributed.world_size()
            print(f"test accuracy {info['test_accuracy']:.4f} (n={info['n_test']}) in "
                  f"{info['seconds']:.1f} s" + (f" ({procs} processes)" if procs > 1 else "")
                  + f" → {args.out}")
    return 0
