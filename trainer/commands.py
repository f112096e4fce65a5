"""``smartcache train``, ``demo`` and ``predict``: argument parsing and Ray start-up only."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from common.config import ExperimentConfig, load_config
from common.errors import SmartCacheError
from trainer import plan_command
from trainer.ray_start import init_ray

DEMO_CONFIG = "demo_cpu.yaml"


def packaged_config(name: str) -> Path:
    return Path(str(resources.files("trainer") / "configs" / name))


def _train(args: argparse.Namespace, cfg: ExperimentConfig) -> int:
    from trainer.launcher import LaunchOptions, run_experiment  # Ray Train, torch, MONAI: only when training

    init_ray(args.address, getattr(args, "num_cpus", None))
    report = run_experiment(cfg, LaunchOptions(out_dir=Path(args.out), resume=getattr(args, "resume", False)))
    print(f"report, curves and model written to {args.out}/")
    return 0 if report.reached_target or not getattr(args, "require_target", False) else 1


def cmd_train(args: argparse.Namespace) -> int:
    config = args.config
    if config is None:  # no config: plan one for this dataset and cluster, print it, train with it
        init_ray(args.address, getattr(args, "num_cpus", None))
        plan = plan_command.plan_run(args.data, args.overrides)
        print(plan.table())
        config = plan_command.write_plan(plan, Path(args.out) / plan_command.PLAN_FILE)
        print(f"\nno --config: training with the plan above ({config}); --set overrides any value\n")
    cfg = load_config(config, [f"data.dataset_dir={args.data}", *args.overrides])
    return _train(args, cfg)


def cmd_demo(args: argparse.Namespace) -> int:
    from common.demo_data import make_demo_data  # nibabel and the phantom maker: only for the demo

    data = Path(args.out) / "data"
    if not (data / "dataset.json").is_file():
        make_demo_data(data, cases=args.cases, size=args.size, seed=0)
        print(f"made {args.cases} synthetic CT cases in {data}")
    cfg = load_config(packaged_config(DEMO_CONFIG), [f"data.dataset_dir={data}", *args.overrides])
    args.require_target = True
    init_ray(args.address, args.num_cpus)
    url = _start_dashboard(args.port, cfg.cache.namespace)
    try:
        return _train(args, cfg)
    finally:
        if url is not None:
            from cache_service.api.server import stop_api  # Ray and FastAPI: only with a dashboard

            stop_api(cfg.cache.namespace)


def _start_dashboard(port: int, namespace: str) -> str | None:
    """The status API on loopback for the demo; a busy port only costs the dashboard, not the run."""
    from cache_service.api.server import start_api  # Ray and FastAPI: only the demo serves a dashboard

    try:
        url = start_api("127.0.0.1", port, None, namespace)
    except SmartCacheError as err:
        print(f"note: no dashboard this time ({err})")
        return None
    print(f"dashboard: {url}/  (cache, pool rotations, ratio and Dice live)")
    return url


def cmd_predict(args: argparse.Namespace) -> int:
    from trainer.predict import Predictor, collect_inputs  # torch and MONAI: only when predicting

    predictor = Predictor(args.checkpoint, device=args.device)
    for path in predictor.predict_files(collect_inputs(args.input), Path(args.out)):
        print(f"wrote {path}")
    return 0


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set training.lr=1e-3; repeatable")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train on an MSD dataset through the shared cache",
                       description="Attach to (or create) the shared cache for this data and preprocessing, "
                                   "train with DDP under Ray Train, validate beside training, and write "
                                   "report.json, metrics, TensorBoard events, plots and model.pt to --out.")
    p.add_argument("--data", required=True, help="MSD dataset folder (with dataset.json)")
    p.add_argument("--config", default=None, help="experiment YAML (default: plan one with `smartcache plan` first)")
    p.add_argument("--out", default="runs/train", help="output folder (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    _common_run_args(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("demo", help="make synthetic CT data and train on it on an embedded local Ray",
                       description="The whole method end to end on this machine: synthetic phantoms, the "
                                   "shared cache, adaptive sampling, NovoGrad, validation, and a final report. "
                                   "Exits non-zero if the target Dice is not reached.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--cases", type=int, default=10, help="synthetic cases (default 10)")
    p.add_argument("--size", type=int, default=64, help="in-plane voxels (default 64)")
    p.add_argument("--port", type=int, default=8740, help="dashboard port on 127.0.0.1 (default 8740)")
    _common_run_args(p)
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("predict", help="segment NIfTI scans with a trained model",
                       description="Apply a model written by `smartcache train` (OUT/model.pt) to a file or "
                                   "a folder of .nii/.nii.gz; label maps are written on each input's own grid "
                                   "and affine as NAME_seg.nii.gz.")
    p.add_argument("--checkpoint", required=True, help="model.pt (or the run folder holding it)")
    p.add_argument("--input", required=True, help="a NIfTI file or a folder of them")
    p.add_argument("--out", required=True, help="folder for the label maps")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(handler=cmd_predict)
