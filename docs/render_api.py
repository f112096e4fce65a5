"""Render docs/api.md from the public API's docstrings: ``python docs/render_api.py [--check]``.

The reference is generated, never hand-edited, so it cannot drift from the code;
``--check`` (used by the unit tests) fails when the file is out of date.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

OUT = Path(__file__).with_name("api.md")
HEADER = """# Python API reference

Generated from the docstrings by `python docs/render_api.py`; do not edit by hand.
How to use it: README, section "Use it from your own code", and `examples/`.

"""


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def _signature(obj: object) -> str:
    """The signature with annotations as written (they are strings under postponed evaluation)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    text = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    for p in sig.parameters.values():
        if isinstance(p.annotation, str):
            has_default = p.default is not inspect.Parameter.empty
            bare = f"{p.name}={p.default!r}" if has_default else p.name
            full = f"{p.name}: {p.annotation}" + (f" = {p.default!r}" if has_default else "")
            text = re.sub(rf"(?<![\w.]){re.escape(bare)}(?=[,)])", lambda _m: full, text, count=1)
    ret = sig.return_annotation
    return text + (f" -> {ret}".replace("'", "") if isinstance(ret, str) and ret != "None" else "")


def _members(cls: type) -> list[tuple[str, object]]:
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in ("__init__", "__iter__", "__enter__"):
            continue
        if isinstance(member, (classmethod, staticmethod)):
            member = member.__func__
        if isinstance(member, property) or inspect.isfunction(member):
            out.append((name, member))
    return out


def _type_name(t: object) -> str:
    """``list[str]`` as written, a plain class by its name."""
    if isinstance(t, str):
        return t
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def _fields(cls: type) -> list[str]:
    """The fields of a dataclass or pydantic model (the types a user receives), with their types."""
    if dataclasses.is_dataclass(cls):
        pairs = [(f.name, f.type) for f in dataclasses.fields(cls)]
    elif isinstance(getattr(cls, "model_fields", None), dict):
        pairs = [(name, info.annotation) for name, info in cls.model_fields.items()]
    else:
        return []
    shown = [f"`{name}: {_type_name(t)}`" for name, t in pairs]
    return ["Fields: " + ", ".join(shown) + ".", ""]


def _class(cls: type) -> list[str]:
    lines = [f"### class `{cls.__name__}`", "", _doc(cls), "", *_fields(cls)]
    for name, member in _members(cls):
        if isinstance(member, property):
            lines += [f"- **`{name}`** (property): {_doc(member.fget) or ''}".rstrip(), ""]
        else:
            body = _doc(member).replace("\n", "\n  ")
            lines += [f"- **`{name}{_signature(member)}`**" + (f"\n\n  {body}" if body else ""), ""]
    return lines


def _module(mod: ModuleType, names: list[str]) -> list[str]:
    lines = [f"## `{mod.__name__}`", "", _doc(mod), ""]
    for name in names:
        obj = getattr(mod, name)
        if inspect.isclass(obj):
            lines += _class(obj)
        elif inspect.isfunction(obj):
            lines += [f"### `{name}{_signature(obj)}`", "", _doc(obj), ""]
    return lines


def render() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cache_service import cluster, handle, snapshot, status
    from cache_service.sdk import api, batches, device, mismatch, protocol
    from common import chain, fair_rotation, patch_fit, scoring, volume

    sections = [
        (api, ["SmartCache", "Experiment"]),
        (batches, ["ConsumerSettings", "CropBatches", "CropDataset", "crops_of", "apply_suffix"]),
        (mismatch, ["CacheSettingsWarning", "setting_differences", "warn_if_different"]),
        (volume, ["PreparedVolume", "require_all_fit"]),
        (patch_fit, ["require_patch_fits", "too_small"]),
        (snapshot, ["Snapshot"]),
        (status, ["CacheStatus", "ExperimentStatus", "SamplerReport", "QuarantinedItem", "FaultEvent"]),
        (device, ["DeviceVolumes"]),
        (protocol, ["attach", "register", "epoch_snapshot", "crop_batches", "finish_epoch", "validation_snapshot",
                    "validation_numbers", "publish_ratio", "unregister"]),
        (scoring, ["ValidationResult", "to_class_maps", "score", "summarise"]),
        (chain, ["UserChain", "CropSpec", "split_user_chain", "check_cacheable", "chain_identity"]),
        (fair_rotation, ["holding_back", "rotation_due", "CycleProgress", "advance_cycle"]),
        (handle, ["CacheHandle"]),
        (cluster, ["join_or_start"]),
    ]
    lines = [HEADER.rstrip(), ""]
    for mod, names in sections:
        lines += _module(mod, names)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if docs/api.md is out of date")
    text = render()
    if p.parse_args().check:
        if not OUT.is_file() or OUT.read_text() != text:
            print("docs/api.md is out of date: run python docs/render_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
