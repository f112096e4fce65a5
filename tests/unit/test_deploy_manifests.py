"""The deploy/ manifests: every command they run is a real ``smartcache`` command with a loadable
config, and the resources they declare agree with each other and with that config."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from common.config import ExperimentConfig, load_config
from common.cpu_budget import cpu_budget, require_rotation_fits
from trainer.cli import build_parser
from trainer.launcher import validator_resources

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IMAGE_ROOT = "/opt/smartcache-seg/"  # where deploy/Dockerfile puts the repository
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def smartcache_argv(command: str) -> list[str] | None:
    """The argv after ``smartcache`` (leading ``VAR=value`` env assignments dropped), or None."""
    words = shlex.split(command)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    return words[1:] if words and words[0] == "smartcache" else None


def _check_command(command: str) -> Any:
    """Parse with the real CLI parser; a config file it names must exist and load."""
    argv = smartcache_argv(command)
    assert argv is not None, f"not a smartcache command: {command!r}"
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as err:  # argparse's way of saying no
        raise AssertionError(f"`smartcache {' '.join(argv)}` does not parse") from err
    if getattr(args, "config", None):
        config = ROOT / args.config.removeprefix(IMAGE_ROOT)
        assert config.is_file(), f"{args.config} is not in the repository"
        args.loaded_config = load_config(config, [f"data.dataset_dir={args.data}"])
    return args


def _shell_commands(commands: list[str]) -> Iterator[str]:
    for line in commands:
        yield from (part.strip() for part in re.split(r"&&|;|\|\|", line) if part.strip())


def _assert_gpus_fit(cfg: ExperimentConfig, gpus: int) -> None:
    """Trainers and the validation actor fit the GPUs, and a fractional validator fits beside one trainer."""
    val = validator_resources(cfg)["num_gpus"]
    assert cfg.training.num_workers * cfg.training.worker_num_gpus + val <= gpus
    assert val >= 1 or cfg.training.worker_num_gpus + val <= 1 or cfg.training.num_workers < gpus


def _gpu_training(args_list: list[Any]) -> ExperimentConfig:
    [cfg] = [a.loaded_config for a in args_list if a.command == "train"]
    return cfg


# ---- cluster launcher --------------------------------------------------------------------------
def test_cluster_launcher_commands_and_resources() -> None:
    [spec] = _docs("cluster.yaml")
    commands = [c for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
                for c in _shell_commands(spec.get(key, []))]
    parsed = [_check_command(c) for c in commands if smartcache_argv(c) is not None]
    assert [a.command for a in parsed] == ["serve"]
    assert any("pip install" in c and "smartcache-seg" in c for c in spec["setup_commands"])
    assert any(mount.startswith("/") for mount in spec["file_mounts"])

    docker = spec.get("docker", {})
    images = {docker.get("head_image", docker.get("image")), docker.get("worker_image", docker.get("image"))}
    assert len(images) == 1 and None not in images, "head and workers must run the same image"

    types = spec["available_node_types"]
    assert spec["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != spec["head_node_type"]}
    assert sum(v["max_workers"] for v in workers.values()) <= spec["max_workers"]
    assert all(v["min_workers"] <= v["max_workers"] for v in workers.values())
    gpus = sum(v["max_workers"] * v["resources"].get("GPU", 0) for v in workers.values())
    cpus = sum(v["max_workers"] * v["resources"]["CPU"] for v in types.values() if "max_workers" in v)
    cfg = _train_config_for_jobs()
    assert cfg.training.use_gpu and cfg.training.num_workers <= gpus
    _assert_gpus_fit(cfg, gpus)
    assert cfg.training.num_workers * cfg.training.worker_num_cpus <= cpus
    require_rotation_fits(cpu_budget(cfg, cpus, in_process=False, node_cpus=cpus))  # the pool can rotate


# ---- KubeRay -------------------------------------------------------------------------------------
def _container(template: dict[str, Any]) -> dict[str, Any]:
    [container] = template["spec"]["containers"]
    return container


def _check_group(params: dict[str, str], container: dict[str, Any]) -> tuple[int, int]:
    """num-cpus / num-gpus of a group equal its container's requests and limits; returns them."""
    res = container["resources"]
    assert res["requests"] == res["limits"], f"{container['name']}: requests differ from limits"
    cpus, gpus = int(params["num-cpus"]), int(params.get("num-gpus", "0"))
    assert int(res["limits"]["cpu"]) == cpus, f"{container['name']}: num-cpus {cpus} vs cpu {res['limits']['cpu']}"
    assert int(res["limits"].get("nvidia.com/gpu", 0)) == gpus, f"{container['name']}: num-gpus mismatch"
    return cpus, gpus


def test_raycluster_resources_and_images() -> None:
    [cluster] = _docs("kuberay/raycluster.yaml")
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    head = _container(spec["headGroupSpec"]["template"])
    _check_group(spec["headGroupSpec"]["rayStartParams"], head)
    images, gpus, cpus = {head["image"]}, 0, 0
    for group in spec["workerGroupSpecs"]:
        worker = _container(group["template"])
        images.add(worker["image"])
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        c, g = _check_group(group["rayStartParams"], worker)
        cpus, gpus = cpus + c * group["replicas"], gpus + g * group["replicas"]
    assert len(images) == 1, f"head and workers must run the same image, got {images}"
    assert any(p["containerPort"] == 8740 for p in head["ports"]), "the status API port is not exposed"
    cfg = _train_config_for_jobs()
    assert cfg.training.num_workers <= gpus and cfg.training.num_workers * cfg.training.worker_num_cpus <= cpus
    require_rotation_fits(cpu_budget(cfg, cpus, in_process=False, node_cpus=cpus))  # the pool can rotate
    _assert_gpus_fit(cfg, gpus)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"rayproject/ray:{spec['rayVersion']}-" in dockerfile, "rayVersion differs from the image's Ray"


def _rayjobs() -> list[dict[str, Any]]:
    jobs = _docs("kuberay/rayjob.yaml")
    assert jobs and all(j["kind"] == "RayJob" for j in jobs)
    return jobs


def _train_config_for_jobs() -> ExperimentConfig:
    return _gpu_training([_check_command(j["spec"]["entrypoint"]) for j in _rayjobs()])


def test_rayjobs_run_real_commands_on_the_shared_cluster() -> None:
    [cluster] = _docs("kuberay/raycluster.yaml")
    parsed = [_check_command(j["spec"]["entrypoint"]) for j in _rayjobs()]
    assert sorted(a.command for a in parsed) == ["serve", "train"]
    assert all(a.address == "auto" for a in parsed)
    for job in _rayjobs():
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
        yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    serve = next(a for a in parsed if a.command == "serve")
    head = _container(cluster["spec"]["headGroupSpec"]["template"])
    if serve.host != "127.0.0.1":  # bound beyond loopback: the head must get a token
        assert any(e["name"] == "SMARTCACHE_TOKEN" for e in head["env"])


# ---- runtime env and docs ----------------------------------------------------------------------
def test_runtime_env_ships_the_tree_without_heavy_folders() -> None:
    env = yaml.safe_load((DEPLOY / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert {".git/", ".venv/", "runs/"} <= set(env["excludes"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_docs_job_submit_examples_are_real_commands() -> None:
    text = (ROOT / "docs" / "cluster.md").read_text()
    commands = [line.split(" -- ", 1)[1] for line in _joined_lines(text)
                if line.lstrip().startswith("ray job submit")]
    assert commands, "docs/cluster.md shows no `ray job submit ... -- smartcache ...`"
    for command in commands:
        _check_command(command)


def _joined_lines(text: str) -> Iterator[str]:
    """Shell lines of the markdown, with backslash continuations joined."""
    buf = ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield buf + line
        buf = ""


@pytest.mark.parametrize("command", ["smartcache trian --data x", "smartcache train --config x.yaml",
                                     "python -m trainer.cli train --data x"])
def test_the_check_rejects_wrong_commands(command: str) -> None:
    with pytest.raises(AssertionError):
        _check_command(command)


# ---- Ray token authentication (on by default from Ray 2.59) -----------------------------------

def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_every_kuberay_container_and_submitter_authenticates_with_one_token() -> None:
    [cluster] = _docs("kuberay/raycluster.yaml")
    spec = cluster["spec"]
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    pods += [job["spec"]["submitterPodTemplate"] for job in _docs("kuberay/rayjob.yaml")]
    secrets = set()
    for pod in pods:
        for container in pod["spec"]["containers"]:
            env = _env(container)
            assert env.get("RAY_AUTH_MODE") == "token", container["name"]
            secrets.add(repr(env["RAY_AUTH_TOKEN"]))
    assert len(secrets) == 1, f"nodes and submitters must share one token, got {secrets}"


def test_cluster_launcher_ships_the_token_and_starts_ray_with_auth() -> None:
    doc = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    assert doc["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    starts = [c for c in doc["head_start_ray_commands"] + doc["worker_start_ray_commands"] if "ray start" in c
              or c.lstrip().startswith(("smartcache", "RAY_AUTH_MODE=token smartcache"))]
    assert starts and all(c.startswith("RAY_AUTH_MODE=token ") for c in starts), starts
