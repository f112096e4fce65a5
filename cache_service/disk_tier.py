"""Arrow IPC disk tier: prepared volumes kept on disk so a restart or a second service skips preprocessing.

One file per item, ``DIR/<fingerprint>/<item_id>.arrow``: a one-row record batch whose
columns are the flattened arrays, with shapes, plain fields and a SHA-256 of every array's
bytes in the schema metadata. Files are written to a temp name and renamed into place, so a
reader sees either nothing or a whole file; they are read memory-mapped, and a file whose
checksum or structure is wrong is deleted and reported, never returned. The whole tier
(every fingerprint under one root) is held under a byte limit: a read refreshes a file's
modification time, and :func:`evict` deletes the least recently used files beyond the
limit, so a default tier in the user's cache folder cannot fill the disk. Nothing here
imports Ray.

A tier the process cannot write, touch or delete in (a read-only mount, another user's
folder) is not an error of the data: a file it cannot read is a miss, a failed touch or
delete is noted in :attr:`DiskTier.error`, and the cache goes on preparing volumes itself.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from common.atomic import atomic_write
from common.volume import PreparedVolume

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
_META_KEY = b"smartcache"
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class TierFile:
    path: Path
    nbytes: int
    mtime: float


def choose_evictions(files: list[TierFile], limit: int, keep: frozenset[Path] = frozenset()) -> list[TierFile]:
    """Least recently used first, until the rest fits ``limit``; ``keep`` (just written) is never chosen."""
    total = sum(f.nbytes for f in files)
    victims = []
    for f in sorted(files, key=lambda f: (f.mtime, str(f.path))):
        if total <= limit:
            break
        if f.path in keep:
            continue
        victims.append(f)
        total -= f.nbytes
    return victims


def evict(root: str | Path, limit: int, keep: frozenset[Path] = frozenset()) -> list[Path]:
    """Delete the least recently used tier files under ``root`` beyond ``limit`` bytes; returns them."""
    files = []
    for path in Path(root).expanduser().glob("*/*.arrow"):
        try:
            st = path.stat()
        except FileNotFoundError:  # another task evicted or replaced it meanwhile
            continue
        files.append(TierFile(path, st.st_size, st.st_mtime))
    gone = []
    for f in choose_evictions(files, limit, keep):
        f.path.unlink(missing_ok=True)
        gone.append(f.path)
    if gone:
        log.info("disk tier %s over %d B: evicted %d least recently used file(s)", root, limit, len(gone))
    return gone


class CorruptFileError(Exception):
    """A disk-tier file failed its checksum or could not be parsed (internal; never escapes read)."""


def _arrays(vol: PreparedVolume) -> dict[str, np.ndarray]:
    named = {"image": vol.image, "label": vol.label, "affine": vol.affine, "original_affine": vol.original_affine}
    named.update({f"class_{c}": idx for c, idx in enumerate(vol.class_indices)})
    return named


def _digest(arrays: dict[str, np.ndarray], header: str) -> str:
    h = hashlib.sha256(header.encode())
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(memoryview(np.ascontiguousarray(arrays[name])).cast("B"))
    return h.hexdigest()


def _header(vol: PreparedVolume, arrays: dict[str, np.ndarray]) -> str:
    return json.dumps({
        "version": FORMAT_VERSION, "item_id": vol.item_id, "num_classes": vol.num_classes,
        "class_counts": list(vol.class_counts), "original_shape": list(vol.original_shape),
        "prep_seconds": vol.prep_seconds, "source": vol.source,
        "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype.str} for k, a in arrays.items()},
    }, sort_keys=True)


def _one_row(array: np.ndarray) -> pa.LargeListArray:
    """A one-row large_list column over the array's bytes, without copying them."""
    flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    return pa.LargeListArray.from_arrays(pa.array([0, len(flat)], pa.int64()), flat)


class DiskTier:
    """Prepared volumes of one fingerprint under ``root/<fingerprint>/``."""

    def __init__(self, root: str | Path, fingerprint: str) -> None:
        self.dir = Path(root).expanduser() / fingerprint
        self.fingerprint = fingerprint
        self.error: str | None = None  # the first operation the file system refused, if any

    def note_error(self, what: str, path: Path, err: OSError) -> None:
        """Remember why the tier cannot be used fully (the cache shows it); the first reason wins."""
        if self.error is None:
            self.error = f"cannot {what} {path} ({type(err).__name__}: {err})"
            log.debug("disk tier: %s", self.error)

    def path(self, item_id: str) -> Path:
        return self.dir / f"{_SAFE_ID.sub('_', item_id)}.arrow"

    def write(self, vol: PreparedVolume) -> Path:
        """Write atomically: a reader never sees a half-written file under the final name."""
        arrays = _arrays(vol)
        header = _header(vol, arrays)
        meta = {_META_KEY: header.encode(), b"sha256": _digest(arrays, header).encode()}
        columns = {k: _one_row(a) for k, a in arrays.items()}
        batch = pa.RecordBatch.from_pydict(columns).replace_schema_metadata(meta)
        def write_ipc(fh: IO[Any]) -> None:
            with ipc.new_file(fh, batch.schema) as writer:
                writer.write_batch(batch)

        atomic_write(self.path(vol.item_id), write_ipc, suffix=".arrow")
        return self.path(vol.item_id)

    def read(self, item_id: str) -> tuple[PreparedVolume | None, str | None]:
        """(volume, None) on a good file; (None, None) if absent or unreadable; (None, why) for a bad one.

        A bad file is deleted (if the tier allows it) and never returned; an unreadable one
        (permissions) is a plain miss, so the caller prepares the volume itself.
        """
        path = self.path(item_id)
        if not path.is_file():
            return None, None
        if not os.access(path, os.R_OK):
            self.note_error("read", path, PermissionError(errno.EACCES, "permission denied"))
            return None, None
        try:
            vol = _read_checked(path, item_id)
        except PermissionError as err:  # an ACL or a race os.access did not see
            self.note_error("read", path, err)
            return None, None
        except (CorruptFileError, pa.ArrowException, OSError, ValueError, KeyError, TypeError) as err:
            reason = f"{path}: rejected corrupt disk-tier file ({type(err).__name__}: {err})"
            log.warning(reason)
            self._discard(path)
            return None, reason
        try:
            os.utime(path)  # recently used: the last to be evicted
        except OSError as err:
            self.note_error("touch", path, err)
        return vol, None

    def _discard(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:  # read-only tier: the bad file stays, and is rejected again next time
            self.note_error("delete", path, err)


def _read_checked(path: Path, item_id: str) -> PreparedVolume:
    source = pa.memory_map(str(path), "r")
    batch = ipc.open_file(source).get_batch(0)
    meta = batch.schema.metadata or {}
    if _META_KEY not in meta or b"sha256" not in meta:
        raise CorruptFileError("schema metadata is missing")
    header_text = meta[_META_KEY].decode()
    header: dict[str, Any] = json.loads(header_text)
    if header.get("item_id") != item_id or header.get("version") != FORMAT_VERSION:
        raise CorruptFileError(f"file holds item {header.get('item_id')!r} version {header.get('version')!r}")
    arrays = {}
    for name, spec in header["arrays"].items():
        flat = batch.column(name).values.to_numpy(zero_copy_only=True)
        if flat.dtype != np.dtype(spec["dtype"]) or flat.size != int(np.prod(spec["shape"])):
            raise CorruptFileError(f"array {name} does not match its declared shape/dtype")
        arrays[name] = flat.reshape(spec["shape"])
    if _digest(arrays, header_text) != meta[b"sha256"].decode():
        raise CorruptFileError("checksum mismatch")
    k = int(header["num_classes"])
    return PreparedVolume(
        item_id=item_id, image=arrays["image"], label=arrays["label"],
        class_indices=tuple(arrays[f"class_{c}"] for c in range(k)), class_counts=tuple(header["class_counts"]),
        affine=arrays["affine"], original_affine=arrays["original_affine"],
        original_shape=tuple(header["original_shape"]), prep_seconds=float(header["prep_seconds"]),
        source=dict(header["source"]))
