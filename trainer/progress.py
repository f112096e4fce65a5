"""Run the training (Ray Train's ``fit`` or the in-process loop) in a thread and show it as it goes.

The caller's thread draws the progress bar from the validation service's rows and hands each
validation row on (a Tune trial reports Dice from there, and Tune ends a stopped trial by
raising in that call, in the caller's thread, as it expects).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import ray
from tqdm.auto import tqdm

from common.config import ExperimentConfig
from trainer.validation_relay import ValidationRelay
from trainer.validator_link import ValidatorLink

POLL_S = 2.0  # seconds between progress polls
TIMEOUT_S = 10.0  # a poll that takes longer (the validation actor restarting) is skipped
UNBOUNDED_BAR = "{desc}: epoch {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"  # no total: tqdm would print "6epoch"


def bar_total(cfg: ExperimentConfig) -> int | None:
    """The bar's length: the epoch cap, unless a time limit ends the run first.

    With ``training.time_limit_s`` the epoch cap is often a large number that only bounds the run,
    and a bar measured against it shows an ETA of hours; without a total the bar counts epochs
    and their rate instead.
    """
    return None if cfg.training.time_limit_s is not None else cfg.training.epochs


def fit_with_progress(fit: Callable[[], Any], validator: ValidatorLink, cfg: ExperimentConfig, show: bool,
                      on_validation: Callable[[dict[str, Any]], None] | None = None,
                      warm_up: Callable[[], None] | None = None) -> Any:
    """``fit()``'s result; epochs, loss, Dice and ratio drawn as they arrive.

    ``warm_up`` runs in this thread once ``fit`` has started (the wait for the cache's fill, overlapped
    with the trainers' start-up); its error ends the call. ``on_validation`` sees every validation row
    once, in order, from this (the caller's) thread.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fit()
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=run, name="training-fit", daemon=True)
    thread.start()
    if warm_up is not None:
        warm_up()
    relay = ValidationRelay(validator, on_validation)
    shown: tuple[int, float | None] = (0, None)
    total = bar_total(cfg)
    with tqdm(total=total, desc="training", unit="epoch", disable=not show,
              bar_format=None if total is not None else UNBOUNDED_BAR) as bar:
        while thread.is_alive():
            thread.join(timeout=POLL_S)
            try:
                rows = [r for r in validator.train_rows(timeout=TIMEOUT_S) if r.get("rank", 0) == 0]
                best = validator.best(timeout=TIMEOUT_S)
            except ray.exceptions.RayError:
                continue
            relay.poll()
            if rows and (len(rows), best) != shown:  # draw each change once (set_postfix would draw it too)
                shown, bar.n = (len(rows), best), len(rows)
                bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}", ratio=f"{rows[-1]['ratio']:.2f}",
                                best_dice="-" if best is None else f"{best:.3f}", refresh=False)
                bar.refresh()
    if "error" in box:
        raise box["error"]
    relay.poll()  # validations that finished between the last poll and the end of training
    return box["result"]
