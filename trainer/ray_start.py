"""How the trainer's commands (``train``, ``demo``, ``plan``, ``sweep``) get onto Ray: :func:`init_ray`.

A module of its own so that the command modules import it at their top without importing
one another (``commands`` runs ``plan_command``'s planner; both need Ray started the same way).
"""

from __future__ import annotations

import os


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at ``address``, or start a new embedded local Ray sized to this machine (never another
    user's cluster that happens to run here); Ray Train v2 in either case."""
    from cache_service.cluster import join_or_start  # Ray: only the commands that run on it load it (not --help)

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    join_or_start(address, num_cpus=num_cpus or os.cpu_count(), log_to_driver=False)
