"""``smartcache train``, ``demo`` and ``predict``: argument parsing and Ray start-up only."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from common.config import ExperimentConfig, load_config
from common.errors import SmartCacheError
from trainer import plan_command
from trainer.ray_start import init_ray

#: the demo's target and a bound on its time (it exits non-zero if the target is not reached)
DEMO_SETTINGS = ("training.target_dice=0.8", "training.time_limit_s=600")


def packaged_config(name: str) -> Path:
    return Path(str(resources.files("trainer") / "configs" / name))


def _train(args: argparse.Namespace, cfg: ExperimentConfig) -> int:
    from trainer.launcher import LaunchOptions, run_experiment  # Ray Train, torch, MONAI: only when training

    init_ray(args.address, getattr(args, "num_cpus", None))
    report = run_experiment(cfg, LaunchOptions(out_dir=Path(args.out), resume=getattr(args, "resume", False)))
    print(f"report, curves and model written to {args.out}/")
    return 0 if report.reached_target or not getattr(args, "require_target", False) else 1


def _config_or_plan(args: argparse.Namespace, data: str, overrides: list[str]) -> ExperimentConfig:
    """``--config`` if given; otherwise plan one for this dataset and cluster, print it and write it to OUT."""
    config = args.config
    if config is None:
        init_ray(args.address, getattr(args, "num_cpus", None))
        plan = plan_command.plan_run(data, overrides)
        print(plan.table())
        config = plan_command.write_plan(plan, Path(args.out) / plan_command.PLAN_FILE)
        print(f"\nno --config: training with the plan above ({config}); --set overrides any value\n")
    return load_config(config, [f"data.dataset_dir={data}", *overrides])


def cmd_train(args: argparse.Namespace) -> int:
    return _train(args, _config_or_plan(args, args.data, args.overrides))


def cmd_demo(args: argparse.Namespace) -> int:
    from common.demo_data import make_demo_data  # nibabel and the phantom maker: only for the demo

    data = Path(args.out) / "data"
    if not (data / "dataset.json").is_file():
        make_demo_data(data, cases=args.cases, size=args.size, seed=0)
        print(f"made {args.cases} synthetic CT cases in {data}")
    init_ray(args.address, args.num_cpus)
    cfg = _config_or_plan(args, str(data), [*DEMO_SETTINGS, *args.overrides])
    args.require_target = True
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
                       description="The whole method end to end on this machine: synthetic phantoms, a plan for "
                                   "them and this machine (or --config), the shared cache, adaptive sampling, "
                                   "NovoGrad, validation beside training, and a final report. Exits non-zero if "
                                   "mean Dice 0.8 is not reached within 10 minutes.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--cases", type=int, default=10, help="synthetic cases (default 10)")
    p.add_argument("--size", type=int, default=64, help="in-plane voxels (default 64)")
    p.add_argument("--port", type=int, default=8740, help="dashboard port on 127.0.0.1 (default 8740)")
    p.add_argument("--config", default=None,
                   help="experiment YAML (default: plan one, as `smartcache train` does; "
                        "trainer/configs/demo_cpu.yaml shows a rotating pool of 6 of 8 and 2 DDP ranks)")
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
