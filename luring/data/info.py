"""What a data set holds: ``luring data info NAME``.

:func:`dataset_info` loads both splits and summarises them as a JSON-able dict;
:func:`format_info` renders that dict as text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from luring.data.registry import SPLITS, data_root, get_spec

__all__ = ["dataset_info", "format_info"]


def _common_dir(paths: list[Path]) -> str:
    return os.path.commonpath([str(p.parent) for p in paths]) if paths else ""


def dataset_info(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Summary of data set ``name``: ``name``, ``description``, ``family``, ``shape`` [C, H, W],
    ``classes``, ``num_classes``, ``location`` (a directory, or ``"embedded"``) and for each
    split ``size``, ``per_class`` ({class name: count}), ``min``/``max`` pixel values (in
    [0, 1]) and ``files``. Missing or damaged files are a LuringError."""
    from luring.data import dataset_classes, load

    spec = get_spec(name)
    classes = list(dataset_classes(name, root))
    splits: dict[str, Any] = {}
    locations: list[Path] = []
    for split in SPLITS:
        files: list[Path] = []
        if not spec.embedded and spec.locate is not None:
            files = spec.locate(split, data_root(root))
            locations += files
        x, y = load(name, split, root)
        counts = torch.bincount(y[y >= 0], minlength=len(classes)).tolist()
        splits[split] = {
            "size": int(len(y)),
            "per_class": {c: int(n) for c, n in zip(classes, counts, strict=False)},
            "min": float(x.min()) if x.numel() else None,
            "max": float(x.max()) if x.numel() else None,
            "files": [str(p) for p in files],
        }
    info: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description,
        "family": spec.family,
        "shape": list(spec.shape),
        "classes": classes,
        "num_classes": len(classes),
        "location": "embedded" if spec.embedded else _common_dir(locations),
        "splits": splits,
    }
    if spec.embedded:
        from luring.data.mnist5k import csv_path

        info["source"] = str(csv_path())
    return info


def format_info(info: dict[str, Any]) -> str:
    """Render :func:`dataset_info`'s dict as readable text (ends with a newline)."""
    c, h, w = info["shape"]
    lines = [f"{info['name']}: {info['description']}".rstrip(": "),
             f"  family:   {info['family']}",
             f"  shape:    {c}×{h}×{w} (C×H×W), float32 in [0, 1]; labels int64",
             f"  location: {info['location']}"]
    if info.get("source"):
        lines.append(f"  source:   {info['source']}")
    for split, s in info["splits"].items():
        lo = "n/a" if s["min"] is None else f"{s['min']:.3f}"
        hi = "n/a" if s["max"] is None else f"{s['max']:.3f}"
        lines.append(f"  {split}: {s['size']} images, values in [{lo}, {hi}]")
    width = max([len("class"), *(len(k) for k in info["classes"])])
    lines.append(f"  label  {'class'.ljust(width)}  " + "  ".join(
        f"{split:>7}" for split in info["splits"]))
    for i, cls in enumerate(info["classes"]):
        counts = "  ".join(f"{s['per_class'][cls]:>7}" for s in info["splits"].values())
        lines.append(f"  {i:>5}  {cls.ljust(width)}  {counts}")
    return "\n".join(lines) + "\n"
