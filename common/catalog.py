"""Medical Segmentation Decathlon catalog: records, split and the cache fingerprint.

The fingerprint names the shared cache. It hashes the preprocessing config together with
each file's identity (path, size, mtime), so two experiments that would compute the same
prepared volumes find the same cache, and editing a file or a preprocessing key yields a
new one instead of silently serving stale data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import DataConfig, PreprocessConfig
from common.errors import DataError

_REQUIRED_KEYS = ("labels", "modality", "training")


@dataclass(frozen=True)
class Record:
    """One training case: an id and the absolute paths of its image and label."""

    item_id: str
    image: str
    label: str


@dataclass(frozen=True)
class Catalog:
    """A parsed dataset.json with its deterministic train/validation split."""

    root: str
    name: str
    modality: str  # first channel's modality as written in dataset.json, e.g. "CT", "MRI"
    labels: tuple[str, ...]  # class names, index = class value
    train: tuple[Record, ...]
    val: tuple[Record, ...]
    num_channels: int = 1  # image channels: the number of modalities dataset.json lists

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def is_ct(self) -> bool:
        return self.modality.strip().upper() == "CT"

    def record(self, item_id: str) -> Record:
        for rec in self.train + self.val:
            if rec.item_id == item_id:
                return rec
        raise DataError(self.root, f"no case with id '{item_id}' in dataset.json")


def _item_id(image_path: str) -> str:
    name = Path(image_path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _resolve(root: Path, rel: Any, where: str, allow_outside: bool) -> str:
    """Absolute path of one listed file, which must lie inside the dataset folder (symlinks followed).

    On a shared cluster the cache's tasks read whatever the Ray worker's user can, so a
    dataset.json must not reach ``../..``, an absolute path or a symlink elsewhere unless the
    user says the dataset is trusted.
    """
    json_path = str(root / "dataset.json")
    if not isinstance(rel, str) or not rel:
        raise DataError(json_path, f"{where} must be a file path, got {rel!r}")
    path = (root / rel).resolve()
    if not allow_outside and not path.is_relative_to(root):
        raise DataError(json_path, f"{where} = {rel!r} resolves to {path}, outside the dataset folder {root}; "
                                   "move the file into the folder, or allow outside paths for a trusted dataset "
                                   "(data.allow_outside_paths: true, or load_catalog(..., allow_outside_paths=True))")
    if not path.is_file():
        raise DataError(str(path), f"file listed in dataset.json ({where}) does not exist")
    return str(path)


def _parse_labels(raw: Any, json_path: Path) -> tuple[str, ...]:
    if not isinstance(raw, dict) or not raw:
        raise DataError(str(json_path), "field 'labels' must map class values to names, e.g. {\"0\": \"background\"}")
    try:
        keys = sorted(int(k) for k in raw)
    except ValueError as err:
        raise DataError(str(json_path), f"field 'labels' has a non-integer key: {err}") from err
    if keys != list(range(len(keys))):
        raise DataError(str(json_path), f"field 'labels' must have keys 0..{len(keys) - 1}, got {keys}")
    return tuple(str(raw[str(k)]) for k in keys)


def _split(records: list[Record], cfg: DataConfig, json_path: Path) -> tuple[list[Record], list[Record]]:
    if cfg.val_ids:
        known = {r.item_id for r in records}
        missing = [v for v in cfg.val_ids if v not in known]
        if missing:
            raise DataError(str(json_path), f"data.val_ids names unknown cases {missing}; known: {sorted(known)}")
        val = [r for r in records if r.item_id in cfg.val_ids]
    else:
        n_val = int(round(len(records) * cfg.val_fraction))
        if cfg.val_fraction > 0 and len(records) > 1:
            n_val = max(1, n_val)
        order = np.random.default_rng(cfg.split_seed).permutation(len(records))
        val = [records[i] for i in sorted(order[:n_val])]
    val_set = {r.item_id for r in val}
    train = [r for r in records if r.item_id not in val_set]
    if not train:
        raise DataError(str(json_path), "the split leaves no training case; lower data.val_fraction or val_ids")
    return train, val


def load_catalog(dataset_dir: str | Path, cfg: DataConfig | None = None, *,
                 allow_outside_paths: bool | None = None) -> Catalog:
    """Read ``DIR/dataset.json`` (MSD layout), check every listed file exists inside DIR, and split it.

    ``allow_outside_paths`` (default: ``cfg.allow_outside_paths``) lets entries point outside DIR.
    """
    cfg = cfg or DataConfig()
    outside = cfg.allow_outside_paths if allow_outside_paths is None else allow_outside_paths
    root = Path(dataset_dir).expanduser().resolve()
    json_path = root / "dataset.json"
    if not json_path.is_file():
        raise DataError(str(json_path), "dataset.json not found; expected a Medical Segmentation Decathlon folder")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(str(json_path), f"not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise DataError(str(json_path), "top level must be a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise DataError(str(json_path), f"missing required field(s) {missing}")
    labels = _parse_labels(meta["labels"], json_path)
    modality = meta["modality"]
    if not isinstance(modality, dict) or not modality:
        raise DataError(str(json_path), "field 'modality' must map channel numbers to names, e.g. {\"0\": \"CT\"}")
    training = meta["training"]
    if not isinstance(training, list) or not training:
        raise DataError(str(json_path), "field 'training' must be a non-empty list of {image, label} entries")
    records: list[Record] = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(str(json_path), f"training[{i}] must have keys 'image' and 'label'")
        image = _resolve(root, entry["image"], f"training[{i}].image", outside)
        label = _resolve(root, entry["label"], f"training[{i}].label", outside)
        records.append(Record(_item_id(image), image, label))
    ids = [r.item_id for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(str(json_path), "two training entries share an image file name")
    train, val = _split(records, cfg, json_path)
    return Catalog(str(root), str(meta.get("name", root.name)), str(modality.get("0", next(iter(modality.values())))),
                   labels, tuple(train), tuple(val), num_channels=len(modality))


def file_identity(path: str) -> tuple[str, int, int]:
    """(path, size, mtime_ns): cheap to read, and changes whenever the file is rewritten."""
    st = Path(path).stat()
    return (path, st.st_size, st.st_mtime_ns)


#: what a prepared volume holds; bump it when that changes (v2: background indices from a user's
#: ``FgBgToIndicesd``; v3: the cache's own background indices inside the body only), so disk-tier
#: files written by an older version are never taken for current ones
PREPARED_FORMAT = 3


def fingerprint(catalog: Catalog, prep: PreprocessConfig, chain: str | None = None) -> str:
    """Hash of the preprocessing and every file's identity; names the shared cache.

    ``chain`` is the identity of a user's own cached MONAI prefix
    (:func:`common.chain.chain_identity`); it then replaces the project's preprocessing config.
    """
    payload = {
        "format": PREPARED_FORMAT,
        "preprocessing": prep.model_dump() if chain is None else {"user_chain": chain},
        "labels": list(catalog.labels),
        "modality": catalog.modality,
        "channels": catalog.num_channels,  # the channel check quarantines by it
        "files": [(r.item_id, file_identity(r.image), file_identity(r.label))
                  for r in sorted(catalog.train + catalog.val, key=lambda r: r.item_id)],
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return digest[:16]
