"""Does an experiment's patch fit the prepared volumes? One check for connect time and batch time.

A volume smaller than the patch cannot be cropped (it is not padded). The check needs only
each volume's spatial shape after the deterministic prefix, so it runs wherever shapes are
known: on the shapes the cache reports once it has prepared volumes (``SmartCache.connect``,
``experiment()``), and on the volumes themselves when a consumer fetches them (the last
guard, for volumes prepared after connect). It never runs at the shared cache, where one
experiment's patch would quarantine items for another.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from common.errors import DataError


def too_small(shapes: Mapping[str, Sequence[int]], patch_size: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The cases (id -> spatial shape) smaller than the patch along at least one axis, in the given order."""
    patch = tuple(int(p) for p in patch_size)
    return {case: tuple(int(s) for s in shape) for case, shape in shapes.items()
            if any(int(s) < p for s, p in zip(shape, patch))}


def require_patch_fits(shapes: Mapping[str, Sequence[int]], patch_size: Sequence[int], parameter: str, *,
                       files: Mapping[str, str] | None = None, unchecked: int = 0) -> None:
    """Raise one :class:`DataError` naming every case smaller than the patch, its shape and the fix.

    ``shapes``: case id -> spatial shape after the prefix. ``parameter`` is the setting the
    user actually set (``transforms[i].spatial_size``, ``patch_size=``, ``sampler.patch_size``),
    so the fix names their own knob. ``files`` (case id -> image path) puts the files in the
    error's path; ``unchecked`` counts cases not prepared yet, which the message says were not
    checked (a later batch checks them).
    """
    small = too_small(shapes, patch_size)
    if not small:
        return
    patch = tuple(int(p) for p in patch_size)
    files = files or {}
    names = ", ".join(files.get(case, case) for case in small)
    cases = ", ".join(f"{case} {shape}" for case, shape in small.items())
    bound = tuple(min([patch[a], *(shape[a] for shape in small.values())]) for a in range(len(patch)))
    rest = f" ({unchecked} case(s) not prepared yet were not checked)" if unchecked else ""
    raise DataError(names, f"{len(small)} volume(s) smaller than this experiment's patch {patch} after "
                           f"preprocessing: {cases} voxels{rest}; lower {parameter} to at most {bound}, or make the "
                           "volumes larger (a finer target spacing, no crop to the foreground)")
