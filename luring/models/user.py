"""Any architecture in, by name: the user's own model classes and factories.

Names :func:`luring.models.build` and :func:`luring.models.arch_spec` accept besides the
built-in ones (:data:`~luring.models.ARCHITECTURES`):

* a name given to :func:`register_architecture` (or its decorator form);
* ``module:callable`` — a factory (a function or a class) in the user's module, imported
  explicitly with :func:`importlib.import_module` (never unpickled). The module must be
  importable: installed, or its folder on ``PYTHONPATH`` (``PYTHONPATH=. luring ...``; the
  ``luring`` command does not search the current directory). Standard-library modules are
  refused. Importing a module runs its code: load checkpoints naming ``module:callable`` only
  from sources you trust, as you would run their Python;
* ``torchvision:NAME`` and ``timm:NAME`` when those packages are installed (randomly
  initialised, ``num_classes`` set; their weights come from ``--weights``);
* ``torchscript`` (:mod:`luring.models.scripted`).

A factory is called with the keyword arguments it declares among ``in_channels`` and
``num_classes``, plus the architecture options (``arch_kwargs``); it must return an
``nn.Module`` taking float32 (N, C, H, W) images and returning (N, K) logits (see
:mod:`luring.models.adapt` for normalised inputs and non-tensor outputs). A checkpoint's
sidecar records ``"factory": {"module", "callable", "path"}`` so that a fresh process can
import it again (:func:`prepare_checkpoint`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from luring.errors import LuringError
from luring.models import scripted
from luring.models.architectures import ARCHITECTURES, ArchSpec

__all__ = ["register_architecture", "unregister_architecture", "dynamic_spec", "is_dynamic",
           "factory_record", "prepare_checkpoint", "call_factory"]

#: Built-in names (the paper's): never replaced by a registration.
_BUILTIN = frozenset(ARCHITECTURES)
_PACKAGES = {"torchvision": "torchvision", "timm": "timm"}
_CACHE: dict[str, ArchSpec] = {}  # module:callable and package names resolved so far
_NO_SHAPE = (0, 0, 0)  # input shape not declared: any (the data set's)


def _accepts(factory: Callable[..., Any]) -> set[str]:
    """The keyword names ``factory`` declares (``{"**"}`` added when it takes **kwargs)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names | ({"**"} if any(p.kind == p.VAR_KEYWORD for p in params) else set())


def call_factory(factory: Callable[..., Any], where: str, in_channels: int | None,
                 num_classes: int | None, fixed_classes: int | None = None,
                 **kwargs: Any) -> nn.Module:
    """``factory(in_channels=..., num_classes=..., **kwargs)`` with only the first two it
    declares; the result must be an ``nn.Module``. A factory that declares no
    ``num_classes`` but outputs ``fixed_classes`` refuses another ``num_classes``. Errors
    (its own exceptions included) are one-line LuringErrors naming ``where``."""
    names = _accepts(factory)
    call = dict(kwargs)
    if in_channels is not None and "in_channels" in names:
        call["in_channels"] = int(in_channels)
    if num_classes is not None and "num_classes" in names:
        call["num_classes"] = int(num_classes)
    elif num_classes is not None and fixed_classes is not None and num_classes != fixed_classes:
        raise LuringError(f"architecture {where} outputs {fixed_classes} classes (its factory "
                          f"takes no num_classes), not {num_classes}")
    try:
        model = factory(**call)
    except LuringError:
        raise
    except Exception as exc:  # the user's code: any exception, reported in one line
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LuringError(f"the factory of architecture {where} failed ({type(exc).__name__}"
                          f"{': ' + why if why else ''}); check it or the options "
                          f"{sorted(call)}") from None
    if not isinstance(model, nn.Module):
        raise LuringError(f"the factory of architecture {where} returned a "
                          f"{type(model).__name__}, not a torch.nn.Module")
    return model


def _spec(name: str, factory: Callable[..., Any], input_shape: tuple[int, int, int],
          num_classes: int | None, role: str, description: str, source: str | None
          ) -> ArchSpec:
    def make(c: int | None = None, k: int | None = None, **kw: Any) -> nn.Module:
        return call_factory(factory, name, c, k, num_classes, **kw)

    return ArchSpec(name, role, input_shape, make, 0, description or f"user factory {source}",
                    num_classes=num_classes, source=source)


def _shape3(shape: Any) -> tuple[int, int, int]:
    """(C, H, W) as three ints; anything else: (0, 0, 0), not declared."""
    try:
        vals = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        return _NO_SHAPE
    return (vals[0], vals[1], vals[2]) if len(vals) == 3 else _NO_SHAPE


def _source_of(factory: Callable[..., Any]) -> str | None:
    """``module:qualname`` of a factory importable by name, else None (a lambda, a local)."""
    mod, qual = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not mod or not qual or "<" in qual or mod == "__main__":
        return None
    return f"{mod}:{qual}"


def register_architecture(name: str, factory: Callable[..., nn.Module] | None = None, *,
                          input_shape: tuple[int, int, int] | list[int],
                          num_classes: int | None = None, role: str = "target",
                          description: str = "", replace: bool = False) -> Any:
    """Register ``factory`` as architecture ``name`` for :func:`~luring.models.build`,
    ``load_checkpoint``, ``import-target --arch NAME`` and the defense's Stack head.

    ``input_shape``: (C, H, W) of the images it takes, in [0, 1]; ``num_classes``: the
    number of logits it returns when the factory takes no ``num_classes`` (None: it does, or
    unknown); ``role``: ``target`` (a classifier M) or ``component`` (an image-to-image P
    with outputs in [0, 1]). Without ``factory`` it returns a decorator::

        @register_architecture("my-net", input_shape=(1, 28, 28))
        def make(num_classes: int = 10) -> nn.Module: ...

    Register in an importable module (not a script's ``__main__``): checkpoints record the
    factory's ``module:qualname`` and a fresh process imports it. A built-in name, and
    another factory under a registered name (unless ``replace``), are refused."""
    if factory is None:
        return lambda f: register_architecture(name, f, input_shape=input_shape,
                                               num_classes=num_classes, role=role,
                                               description=description, replace=replace)
    if not isinstance(name, str) or not name or ":" in name or name == scripted.TORCHSCRIPT \
            or name.startswith("default-component-"):
        raise LuringError(f"architecture name {name!r} is reserved or invalid; use a plain name "
                          "without ':'")
    if name in _BUILTIN:
        raise LuringError(f"{name} is a built-in architecture; register under another name")
    if not callable(factory):
        raise LuringError(f"the factory of {name} must be callable, got {type(factory).__name__}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise LuringError(f"input_shape must be (C, H, W) of positive sizes, got {input_shape!r}")
    if role not in ("target", "component"):
        raise LuringError(f"role must be target or component, got {role!r}")
    old = ARCHITECTURES.get(name)
    source = _source_of(factory)
    if old is not None and not replace and (old.source is None or old.source != source):
        by = old.source or "a local factory"
        raise LuringError(f"architecture {name} is already registered (by {by}); pass "
                          "replace=True or choose another name")
    ARCHITECTURES[name] = _spec(name, factory, _shape3(shape), num_classes, role, description,
                                source)
    return factory


def unregister_architecture(name: str) -> None:
    """Remove a registered (not a built-in) architecture; an unknown name is ignored."""
    if name not in _BUILTIN:
        ARCHITECTURES.pop(name, None)


def is_dynamic(name: Any) -> bool:
    """True for names resolved here rather than registered: ``module:callable``,
    ``torchvision:NAME``, ``timm:NAME`` and ``torchscript``."""
    return isinstance(name, str) and (":" in name or name == scripted.TORCHSCRIPT)


def _import(module: str, name: str, hint: str = "") -> Any:
    top = module.split(".")[0]
    if top in getattr(sys, "stdlib_module_names", ()) or top == "builtins":
        raise LuringError(f"architecture {name} names the standard-library module {module}, "
                          "not a model factory; pass module:callable of your own module")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
            raise LuringError(f"cannot import module {module} for architecture {name}{hint}: "
                              "add the folder holding it to PYTHONPATH (e.g. PYTHONPATH=. "
                              "luring ...) or install it") from None
        raise LuringError(f"importing module {module} for architecture {name} failed (missing "
                          f"module {exc.name}: pip install it)") from None
    except Exception as exc:  # the user's module raised while being imported
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LuringError(f"importing module {module} for architecture {name} failed "
                          f"({type(exc).__name__}{': ' + why if why else ''})") from None


def _package_spec(pkg: str, model: str, name: str) -> ArchSpec:
    if importlib.util.find_spec(_PACKAGES[pkg]) is None:
        raise LuringError(f"architecture {name} needs {pkg}, which is not installed: pip "
                          f"install {pkg}")
    lib = _import(_PACKAGES[pkg], name)

    def make(c: int | None = None, k: int | None = None, **kw: Any) -> nn.Module:
        if pkg == "timm":
            opts = ({"in_chans": int(c)} if c else {}) | ({"num_classes": int(k)} if k else {})
            return call_factory(lambda: lib.create_model(model, pretrained=False, **opts, **kw),
                                name, None, None)
        if c not in (None, 3):
            raise LuringError(f"torchvision's {model} takes 3-channel images, not {c}")
        opts = {"num_classes": int(k)} if k else {}
        return call_factory(lambda: lib.models.get_model(model, weights=None, **opts, **kw),
                            name, None, None)

    return ArchSpec(name, "target", (3, 224, 224), make, 0, f"{pkg}'s {model}", source=name)


def dynamic_spec(name: str, hint: str = "") -> ArchSpec:
    """The :class:`ArchSpec` of a :func:`is_dynamic` name (imported on first use; ``hint``
    is added to an import error, e.g. where the module was). One-line LuringErrors for a
    module that cannot be imported, a missing callable or a missing package."""
    if name in _CACHE:
        return _CACHE[name]
    if name == scripted.TORCHSCRIPT:
        spec = ArchSpec(name, "target", _NO_SHAPE, lambda c=None, k=None, **kw:
                        scripted.fresh(**kw), 0, "a TorchScript file (torch.jit.load)")
        _CACHE[name] = spec
        return spec
    module, _, attr = name.partition(":")
    if not module or not attr or ":" in attr:
        raise LuringError(f"architecture {name!r}: expected module:callable (e.g. mymodels:"
                          "make_net), torchvision:NAME, timm:NAME or torchscript")
    if module in _PACKAGES:
        spec = _package_spec(module, attr, name)
    else:
        obj = _import(module, name, hint)
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise LuringError(f"module {module} has no {attr} (architecture {name}); name "
                                  "a function or class defined in it")
            obj = getattr(obj, part)
        if not callable(obj):
            raise LuringError(f"{name} is a {type(obj).__name__}, not a callable factory")
        shape = _shape3(getattr(obj, "input_shape", None) or _NO_SHAPE)
        spec = _spec(name, obj, shape, None, "target", "", name)
    _CACHE[name] = spec
    return spec


def factory_record(architecture: str, name: str) -> dict[str, Any] | None:
    """What a checkpoint ``name``'s sidecar records under ``"factory"`` to rebuild
    ``architecture`` in a fresh process, or None for a built-in one."""
    if architecture == scripted.TORCHSCRIPT:
        return {"kind": "torchscript", "file": f"{name}.pt"}
    spec = ARCHITECTURES.get(architecture) or _CACHE.get(architecture)
    source = spec.source if spec is not None else (architecture if ":" in architecture
                                                   else None)
    if not source or source.split(":")[0] in _PACKAGES:
        return {"kind": "package", "package": source.split(":")[0]} if source else None
    module, _, attr = source.partition(":")
    path = getattr(sys.modules.get(module), "__file__", None)
    return {"kind": "python", "module": module, "callable": attr,
            "path": str(Path(path).resolve()) if path else None,
            **({"registered_as": architecture} if architecture != source else {})}


def prepare_checkpoint(meta: dict[str, Any], directory: Path, name: str) -> str:
    """Make a checkpoint's architecture buildable in this process; returns its name.
    ``torchscript``: ``NAME.pt`` is read (its SHA-256 checked against the sidecar's
    ``arch_kwargs.sha256``) and remembered. A registered name this process does not know:
    the module of the recorded factory is imported (it registers the name, else the
    factory is registered from the record)."""
    arch = meta["architecture"]
    rec = meta.get("factory") if isinstance(meta.get("factory"), dict) else {}
    if arch == scripted.TORCHSCRIPT:
        sha = (meta.get("arch_kwargs") or {}).get("sha256")
        scripted.read_scripted(directory / f"{name}.pt", sha)  # never a path from the file
        return arch
    hint = f" (it was {rec['path']})" if rec.get("path") else ""
    if is_dynamic(arch):
        dynamic_spec(arch, hint)
        return arch
    if arch in ARCHITECTURES or rec.get("kind") != "python" or not rec.get("module"):
        return arch
    src = f"{rec['module']}:{rec.get('callable')}"
    dynamic = dynamic_spec(src, hint)
    if arch not in ARCHITECTURES:  # the module did not register it on import: from the record
        shape = _shape3(meta.get("input_shape") or _NO_SHAPE)
        role = meta.get("role") if meta.get("role") in ("target", "component") else "target"
        ARCHITECTURES[arch] = _spec(arch, _factory_of(dynamic), shape, None,
                                    str(role), "", src)
    return arch


def _factory_of(spec: ArchSpec) -> Callable[..., nn.Module]:
    """The user's factory behind a :func:`dynamic_spec` of ``module:callable``."""
    module, _, attr = str(spec.source).partition(":")
    obj: Any = sys.modules[module]
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
