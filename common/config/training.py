"""What only the trainers and the validation actor read: optimisation, the network, stopping, validation."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import model_validator
from typing_extensions import Self

from common.config.fields import Bool, Float, Int, PositiveInt, PositiveTriple, problem, rule
from common.config.section import Section

#: the learning rate each optimiser gets when ``training.lr`` is left out. NovoGrad normalises each
#: layer's step by the layer's gradient norm, so it needs a larger lr than Adam (as MONAI's fast-training
#: recipe, which uses 10x Adam's); measured on the demo phantoms in docs/benchmarks.md ("NovoGrad").
DEFAULT_LR = {"novograd": 1e-2, "adam": 1e-3, "sgd": 1e-2}


def _gpu_share(v: float) -> bool:
    """A fraction of one GPU, or whole GPUs (never negative: Ray would refuse it at placement)."""
    return 0 < v <= 1 or (v > 1 and float(v).is_integer())


class TrainingConfig(Section):
    """Optimisation and the run's stopping rule."""

    section: ClassVar[str] = "training"

    batch_size: PositiveInt = 2
    lr: Annotated[Float, rule(lambda v: v > 0, "a learning rate > 0, or null for the optimiser's default")
                  ] | None = None
    """null: DEFAULT_LR of the optimiser, filled in on validation (so it is a number on every loaded config)."""
    optimizer: Literal["novograd", "adam", "sgd"] = "novograd"
    loss: Literal["dice_ce", "dice"] = "dice_ce"
    """dice_ce: Eq. 1's soft Dice plus cross-entropy; dice: Eq. 1 alone."""
    weight_decay: Annotated[Float, rule(lambda v: v >= 0, "a number >= 0 (0 switches it off)")] = 0.0
    amp: Bool = True
    cpu_bf16: Bool = False
    epochs: PositiveInt = 100
    target_dice: Annotated[Float, rule(lambda v: 0 < v <= 1, "a Dice in (0, 1]")] = 0.9
    num_workers: PositiveInt = 1
    use_gpu: Bool = False
    seed: Int = 0
    deterministic: Bool = False
    channels: tuple[Int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[Int, ...] = (2, 2, 2, 2)
    num_res_units: Int = 2
    worker_num_cpus: Annotated[Float, rule(lambda v: v > 0, "a CPU share > 0")] = 1.0
    worker_num_gpus: Annotated[Float, rule(_gpu_share, "a GPU share in (0, 1] or a whole number of GPUs")] = 1.0
    """GPUs per DDP worker when use_gpu; 0.5 leaves half a GPU to validation."""
    steps_per_epoch: PositiveInt | None = None
    """null: one pass over the worker's shard."""
    checkpoint_every: PositiveInt = 10
    """Epochs between Ray Train checkpoints (and at the last epoch)."""
    time_limit_s: Annotated[Float, rule(lambda v: v > 0, "seconds > 0, or null")] | None = None
    """Stop after this many seconds of wall time even if the target is not reached; null: no limit."""
    loader_workers: Annotated[Int, rule(lambda v: v >= 0, "an integer >= 0 (0 loads in the trainer process itself)")
                              ] = 2
    """Without a cache: DataLoader processes per trainer that load and preprocess."""
    max_failures: Annotated[Int, rule(lambda v: v >= -1, "an integer >= 0, or -1 to restart the worker group "
                                                         "without limit")] = 3
    """Worker-group restarts (from the last checkpoint) Ray Train makes before giving up."""
    heap_keep_mib: Annotated[Int, rule(lambda v: v >= 0, "MiB >= 0 (0 keeps the C library's defaults)")] = 512
    """glibc only: a process that trains or validates keeps up to this much freed memory for its next
    step, and takes blocks under a quarter of it (at most 128 MiB) from its heap, rather than returning
    memory to the OS and faulting it in again every step (common/heap.py); 0: the C library's defaults, or
    the MALLOC_* variables of your own environment."""
    runner: Literal["auto", "ray_train", "in_process"] = "auto"
    """Where the training loop runs. ray_train: Ray Train workers (DDP, restarted from the last checkpoint
    when one dies) and a validation actor of its own. in_process: one worker in the calling process, with
    validation in a thread of that process; no worker or validator process to start (about 0.5 GB and
    seconds of imports each), but a crash ends the run. auto: in_process for a one-worker sweep trial
    (the trial is already a process Ray placed), ray_train otherwise."""

    @model_validator(mode="before")
    @classmethod
    def _default_lr(cls, data: Any) -> Any:
        """A missing or null lr becomes the optimiser's default (an unknown optimiser is refused later)."""
        if isinstance(data, dict) and data.get("lr") is None:
            optimizer = data.get("optimizer", "novograd")
            if isinstance(optimizer, str) and optimizer in DEFAULT_LR:
                return {**data, "lr": DEFAULT_LR[optimizer]}
        return data

    def runs_in_process(self, sweep_trial: bool) -> bool:
        """Whether the loop runs in the caller's process (``runner``; auto decides by ``sweep_trial``)."""
        if self.runner == "auto":
            return sweep_trial and self.num_workers == 1
        return self.runner == "in_process"

    @model_validator(mode="after")
    def _in_process_is_one_worker(self) -> Self:
        if self.runner == "in_process" and self.num_workers != 1:
            raise problem("in_process runs one worker; set training.num_workers=1 or training.runner=ray_train "
                          f"(DDP over {self.num_workers} workers)", "runner", self.runner)
        return self

    @model_validator(mode="after")
    def _one_stride_per_level(self) -> Self:
        if len(self.strides) != len(self.channels) - 1:
            raise problem(f"one stride fewer than channels ({len(self.channels)} channels)", "strides", self.strides)
        return self


class ValidationConfig(Section):
    """Sliding-window validation run by the validation actor."""

    section: ClassVar[str] = "validation"

    roi_size: PositiveTriple = (160, 160, 160)
    overlap: Annotated[Float, rule(lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")] = 0.5
    interval: Annotated[Int, rule(lambda v: v >= 1, "an integer >= 1 (epochs)")] = 1
    keep_largest_component: Bool = False
    sw_batch_size: PositiveInt = 1
    num_cpus: Float = 0.5
    num_gpus: Annotated[Float, rule(lambda v: v == 0 or _gpu_share(v),
                                    "0 (validate on CPU), a GPU share in (0, 1], or a whole number of GPUs to "
                                    "split the volumes over")] = 0.5
    """GPUs of the validation actor whenever training uses GPUs (ignored on CPU runs): a share such as 0.5
    runs beside a trainer on one GPU; a whole number >= 2 splits the validation volumes across that many
    GPUs, as the paper does."""

    def gpus_for(self, training_uses_gpu: bool) -> float:
        """The validation actor's GPU request: none for a CPU run, else ``num_gpus``."""
        return float(self.num_gpus) if training_uses_gpu else 0.0
