"""The planning rules as pure functions over described datasets and machines (no Ray, no files)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from common.config import config_from_dict
from common.cpu_budget import cpu_budget, require_rotation_fits
from common.errors import ConfigError
from common.planning.fingerprint import PERCENTILES, CaseStats, DatasetFingerprint
from common.planning.machine import Machine, NodeSpec, described_machine
from common.planning.geometry_rules import fill_budget, plan_grid
from common.planning.plan import make_plan
from common.planning.run_rules import plan_resources
from common.planning.schedule_rules import plan_validation, plan_window, validation_voxels_per_s

GPU_NODE = Machine((NodeSpec(cpus=64, memory_bytes=512 * 2**30, object_store_bytes=150 * 2**30, gpus=8,
                             gpu_memory_bytes=80 * 2**30, gpu_name="H100"),))
CPU_NODE = Machine((NodeSpec(cpus=2, memory_bytes=8 * 2**30, object_store_bytes=2 * 2**30),))


def case(i: int, spacing: tuple[float, float, float], shape: tuple[int, int, int], *, fg: float = 0.05,
         p99: float = 1000.0, fg_extent: tuple[float, float, float] = (80.0, 80.0, 80.0),
         prep: float | None = 2.0) -> CaseStats:
    pct = tuple(p99 * q / 99.0 for q in PERCENTILES)
    return CaseStats(item_id=f"case{i}", spacing=spacing, shape=shape, orientation="RAS", channels=1,
                     fg_percentiles=pct, nonzero_percentiles=pct, nonzero_mean=p99 / 2, nonzero_std=p99 / 4,
                     max_intensity=p99 * 1.1, class_fractions=(1 - fg, fg), fg_extent_mm=fg_extent,
                     prep_seconds=prep)


def dataset(cases: list[CaseStats], modality: str = "CT", num_train: int | None = None) -> DatasetFingerprint:
    return DatasetFingerprint("Test", modality, ("background", "organ"),
                              num_train if num_train is not None else len(cases) - 1, tuple(cases))


def isotropic_ct(n: int = 40) -> DatasetFingerprint:
    return dataset([case(i, (0.8, 0.8, 1.0), (512, 512, 300 + i)) for i in range(n)])


def test_gpu_node_and_cpu_node_get_different_sensible_plans() -> None:
    fp = isotropic_ct()
    gpu, cpu = make_plan(fp, GPU_NODE), make_plan(fp, CPU_NODE)
    assert gpu.value("training.use_gpu") is True and gpu.value("training.num_workers") == 8
    assert cpu.value("training.use_gpu") is False and cpu.value("training.num_workers") == 1
    assert gpu.value("preprocessing.spacing") == [0.8, 0.8, 1.0]  # the median, no coarsening on a GPU
    assert min(cpu.value("preprocessing.spacing")) > 1.5  # coarsened to the 2-core voxel budget
    gpu_patch, cpu_patch = gpu.value("sampler.patch_size"), cpu.value("sampler.patch_size")
    assert math.prod(gpu_patch) > 8 * math.prod(cpu_patch)
    assert gpu.value("training.channels")[0] == 32 and cpu.value("training.channels")[0] == 16
    assert gpu.value("sampler.device") == "cuda" and cpu.value("sampler.device") == "cpu"
    # both are valid experiment configs whose shares fit their machine
    for plan, machine in ((gpu, GPU_NODE), (cpu, CPU_NODE)):
        cfg = plan.config("/data")
        t = cfg.training
        assert t.num_workers * t.worker_num_cpus + cfg.validation.num_cpus <= machine.total_cpus
        budget = cpu_budget(cfg, machine.total_cpus, in_process=False, node_cpus=machine.nodes[0].cpus)
        require_rotation_fits(budget)  # a replacement always finds its share beside the run
        assert budget.trainers_start_during_fill
        if t.use_gpu:
            assert t.num_workers * t.worker_num_gpus + cfg.validation.num_gpus <= machine.total_gpus


def test_cpu_bf16_only_where_every_node_computes_bf16_natively() -> None:
    fp = isotropic_ct()

    def node(bf16: bool | None) -> NodeSpec:
        return NodeSpec(cpus=2, memory_bytes=8 * 2**30, object_store_bytes=2 * 2**30, cpu_bf16=bf16)

    assert make_plan(fp, Machine((node(True),))).config("/data").training.cpu_bf16 is True
    assert make_plan(fp, Machine((node(False),))).value("training.cpu_bf16") is False
    unknown = make_plan(fp, CPU_NODE)  # a described machine: not known, so fp32
    assert unknown.value("training.cpu_bf16") is False
    assert "not known" in next(c.reason for c in unknown.choices if c.key == "training.cpu_bf16")
    assert Machine((node(True), node(False))).cpu_bf16 is False and Machine((node(True), node(None))).cpu_bf16 is None
    assert "training.cpu_bf16" not in {c.key for c in make_plan(fp, GPU_NODE).choices}  # GPUs use fp16
    assert "(bf16)" in Machine((node(True),)).describe()


def test_cpu_patch_fits_the_step_budget_and_the_gpu_patch_the_memory() -> None:
    fp = isotropic_ct()
    cpu = make_plan(fp, CPU_NODE)
    assert math.prod(cpu.value("sampler.patch_size")) * cpu.value("training.batch_size") <= 2 * 64**3
    small_gpu = Machine((NodeSpec(8, 64 * 2**30, 16 * 2**30, gpus=1, gpu_memory_bytes=16 * 2**30),))
    big, small = make_plan(fp, GPU_NODE), make_plan(fp, small_gpu)
    assert math.prod(small.value("sampler.patch_size")) < math.prod(big.value("sampler.patch_size"))
    assert small.value("training.worker_num_gpus") == 0.5 and small.value("validation.num_gpus") == 0.5


def test_five_mm_slices_give_an_anisotropic_plan() -> None:
    fp = dataset([case(i, (0.7, 0.7, 5.0), (512, 512, 60)) for i in range(20)], modality="MRI")
    plan = make_plan(fp, GPU_NODE)
    spacing = plan.value("preprocessing.spacing")
    assert spacing[2] == 5.0 and spacing[0] == spacing[1] == 0.7
    patch = plan.value("sampler.patch_size")
    assert patch[2] < patch[0]  # fewer voxels along the slices
    assert "anisotropic" in next(c.reason for c in plan.choices if c.key == "preprocessing.spacing")


def test_low_resolution_axis_uses_its_tenth_percentile() -> None:
    spacings = [5.0] * 9 + [1.5]
    fp = dataset([case(i, (0.7, 0.7, s), (512, 512, 60)) for i, s in enumerate(spacings)], modality="MRI")
    assert make_plan(fp, GPU_NODE).value("preprocessing.spacing")[2] == pytest.approx(
        float(np.percentile(spacings, 10)))


def test_pool_rotates_when_the_object_store_is_small_and_keeps_up_with_preparation() -> None:
    fp = isotropic_ct()
    small_store = Machine((NodeSpec(cpus=2, memory_bytes=8 * 2**30, object_store_bytes=2**28),))
    cpu = make_plan(fp, small_store)
    cache_num = cpu.value("cache.cache_num")
    assert cache_num is not None and 1 <= cache_num < fp.num_train
    assert cpu.value("cache.byte_budget") == f"{small_store.object_store_bytes // 2 // 2**20}MiB"
    assert 0 < cpu.value("cache.replace_rate") <= 0.5
    assert make_plan(fp, GPU_NODE).value("cache.cache_num") is None  # 150 GiB store: every case fits


def test_slow_preparation_lowers_the_replace_rate() -> None:
    fast = dataset([case(i, (0.8, 0.8, 1.0), (512, 512, 300), prep=0.5) for i in range(40)])
    slow = dataset([case(i, (0.8, 0.8, 1.0), (512, 512, 300), prep=600.0) for i in range(40)])
    small_store = Machine((NodeSpec(cpus=2, memory_bytes=8 * 2**30, object_store_bytes=2**28),))
    assert (make_plan(slow, small_store).value("cache.replace_rate")
            < make_plan(fast, small_store).value("cache.replace_rate"))


def test_mri_from_different_scanners_is_clipped_and_augmented() -> None:
    fp = dataset([case(0, (1, 1, 1), (181, 217, 181), p99=100.0), case(1, (1.5, 1.5, 1.5), (116, 150, 155),
                                                                         p99=900.0)], modality="MRI", num_train=1)
    plan = make_plan(fp, CPU_NODE)
    assert plan.value("preprocessing.normalization") == "mri"
    assert plan.value("preprocessing.clip_percentiles") == [1.0, 99.0]
    assert plan.value("augmentation.contrast_prob") > 0 and plan.value("augmentation.affine_prob") > 0
    ct = make_plan(isotropic_ct(), CPU_NODE)
    assert ct.value("preprocessing.normalization") == "ct" and ct.value("augmentation.contrast_prob") == 0


def test_small_lesions_keep_every_component_and_an_organ_only_the_largest() -> None:
    lesions = dataset([case(i, (1, 1, 1), (200, 200, 150), fg=0.001) for i in range(10)])
    organ = dataset([case(i, (1, 1, 1), (200, 200, 150), fg=0.05) for i in range(10)])
    assert make_plan(lesions, CPU_NODE).value("validation.keep_largest_component") is False
    assert make_plan(organ, CPU_NODE).value("validation.keep_largest_component") is True


def test_every_value_has_a_reason_and_the_yaml_is_a_config_train_takes() -> None:
    plan = make_plan(isotropic_ct(), CPU_NODE)
    assert all(c.reason.strip() for c in plan.choices)
    text = plan.to_yaml()
    body = [line for line in text.splitlines() if line.startswith("  ")]
    assert len(body) == len(plan.choices) and all("  # " in line for line in body)
    raw = yaml.safe_load(text)
    cfg = config_from_dict({**raw, "data": {"dataset_dir": "/data"}})
    assert list(cfg.sampler.patch_size) == plan.value("sampler.patch_size")
    assert list(cfg.preprocessing.spacing) == plan.value("preprocessing.spacing")
    table = plan.table()
    assert all(c.key in table for c in plan.choices)


def test_described_machine_strings() -> None:
    m = described_machine("2x64:8x80GiB")
    assert len(m.nodes) == 2 and m.total_gpus == 16 and m.gpu_memory_bytes == 80 * 2**30
    assert described_machine("1x2").has_gpu is False
    with pytest.raises(ConfigError, match="--machine"):
        described_machine("lots")


def test_patch_never_exceeds_the_smallest_case() -> None:
    cases = [case(i, (0.8, 0.8, 6.5), (256, 256, 24)) for i in range(5)] + [case(9, (0.7, 0.7, 2.1), (45, 120, 21))]
    plan = make_plan(dataset(cases, modality="MRI"), GPU_NODE)
    spacing, patch = plan.value("preprocessing.spacing"), plan.value("sampler.patch_size")
    smallest = [round(n * s / t) for n, s, t in zip((45, 120, 21), (0.7, 0.7, 2.1), spacing)]
    assert all(p <= s for p, s in zip(patch, smallest))
    assert "smallest case" in next(c.reason for c in plan.choices if c.key == "sampler.patch_size")


def test_the_optimiser_is_novograd_unless_the_training_set_is_a_handful_of_cases() -> None:
    many = make_plan(isotropic_ct(12), CPU_NODE)
    few = make_plan(dataset([case(i, (1.0, 1.0, 1.0), (180, 220, 180)) for i in range(2)], "MRI", num_train=1),
                    CPU_NODE)
    chosen = {p: {c.key: c for c in plan.choices}["training.optimizer"] for p, plan in (("many", many), ("few", few))}
    assert chosen["many"].value == "novograd" and "11 training cases" in chosen["many"].reason
    assert chosen["few"].value == "adam" and "only 1 training case" in chosen["few"].reason
    # the lr is the optimiser's own default once the plan is a config
    assert few.config().training.lr == pytest.approx(1e-3)



def test_the_patch_fills_its_budget_in_multiples_of_the_down_sampling() -> None:
    budget, factor, upper = 64**3, 8, (127, 158, 148)
    patch = fill_budget([59, 73, 61], upper, factor, budget)  # BrainDev on 2 cores, before rounding
    assert all(p % factor == 0 for p in patch) and math.prod(patch) <= budget
    for axis in range(3):  # no axis can grow by one more multiple within the budget and the image
        grown = list(patch)
        grown[axis] += factor
        assert math.prod(grown) > budget or grown[axis] > upper[axis]
    assert math.prod(patch) > 0.95 * budget  # rounding every axis down alone gave 56x72x56, 86 %
    assert fill_budget([20, 20, 20], (24, 24, 24), 8, 10**9) == (24, 24, 24)  # the image bounds it


def test_one_window_pass_costs_about_one_training_step() -> None:
    patch, median = (56, 72, 64), (127, 158, 148)
    cpu = plan_window(patch, 8, median, batch=2, sw_batch=1)
    gpu = plan_window(patch, 8, median, batch=2, sw_batch=2)
    assert all(p <= w <= m for p, w, m in zip(patch, cpu, median))
    assert 0.5 * 6 * math.prod(patch) <= math.prod(cpu) <= 6 * math.prod(patch)  # 2 / (1/3 x 1)
    assert 0.5 * 3 * math.prod(patch) <= math.prod(gpu) <= 3 * math.prod(patch)  # 2 / (1/3 x 2)
    assert plan_window((64, 64, 64), 8, (70, 70, 70), batch=2, sw_batch=1) == [64, 64, 64]  # within the volume


def test_validation_runs_as_often_as_its_own_share_keeps_up() -> None:
    fp = dataset([case(i, (1.0, 1.0, 1.0), (160, 160, 160)) for i in range(10)], modality="MRI", num_train=8)
    plan = make_plan(fp, CPU_NODE)
    res = plan_resources(CPU_NODE, fp.num_train)
    grid, _ = plan_grid(fp, CPU_NODE)
    patch = tuple(plan.value("sampler.patch_size"))
    factor = 2 ** len(plan.value("training.strides"))
    slow = {c.key: c.value for c in plan_validation(fp, grid, patch, factor, res, 1.0, 2)}
    fast = {c.key: c.value for c in plan_validation(fp, grid, patch, factor, res, 60.0, 2)}
    assert slow["validation.interval"] > fast["validation.interval"] == 1  # long epochs: every epoch
    roi = slow["validation.roi_size"]
    windows = math.prod(math.ceil(s / (r * 0.75)) for s, r in zip(grid.median_shape, roi))
    val_s = 2 * windows * math.prod(roi) / 3 / validation_voxels_per_s(res)  # 2 validation cases
    assert slow["validation.interval"] == min(10, math.ceil(val_s / 1.0))


@pytest.mark.parametrize("spec", ["1x2", "1x4", "1x8", "1x16", "4x16", "1x2:1x16GiB", "1x4:1x16GiB", "1x16:1x24GiB",
                                  "1x64:8x80GiB", "2x16:2x40GiB"])
def test_planned_shares_leave_the_cache_room_to_fill_beside_the_trainers_and_to_rotate(spec: str) -> None:
    machine = described_machine(spec)
    cfg = make_plan(isotropic_ct(), machine).config("/data")
    budget = cpu_budget(cfg, machine.total_cpus, in_process=False, node_cpus=min(n.cpus for n in machine.nodes))
    require_rotation_fits(budget)
    assert budget.trainers_start_during_fill, budget
    assert 0 < cfg.cache.task_num_cpus <= 1.0
