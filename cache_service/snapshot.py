"""What a trainer receives at an epoch start: the pool's refs for one generation, and its ratio."""

from __future__ import annotations

from dataclasses import dataclass

import ray


@dataclass(frozen=True)
class Snapshot:
    """The pool at one generation. Holding it keeps every item readable, even after a rotation.

    The refs are borrowed from the cache actor; ``ray.get`` on one returns a
    :class:`~common.volume.PreparedVolume` whose arrays are read-only views into shared memory.
    """

    generation: int
    item_ids: tuple[str, ...]
    refs: tuple[ray.ObjectRef, ...]
    ratio: float

    def __len__(self) -> int:
        return len(self.item_ids)

    def shard(self, rank: int, world_size: int) -> "Snapshot":
        """Every ``world_size``-th item starting at ``rank`` (a DDP rank's share)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        return Snapshot(self.generation, self.item_ids[rank::world_size], self.refs[rank::world_size], self.ratio)
