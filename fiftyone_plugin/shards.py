"""Which shard a sample belongs to, when one run is split into K delegated operations.

Membership is a pure function of the sample's id (its ObjectId as a number, modulo K), so the K shards are disjoint
and together complete whatever order workers run them in, and a shard run again (a re-queued operation) picks the
same samples, of which it redoes only those not done yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


def check_shards(shards) -> int:
    """`shards` as a count of shards (1 = no split), or a clear error."""
    if isinstance(shards, bool) or not isinstance(shards, int):
        raise ValueError(f"shards must be a whole number of delegated operations (1 or more), not {shards!r}")
    if shards < 1:
        raise ValueError(f"shards must be 1 or more (1 runs in one operation), not {shards}")
    return shards


@dataclass(frozen=True)
class Shard:
    """Shard `index` (from 0) of `count`."""

    index: int
    count: int

    def __post_init__(self):
        check_shards(self.count)
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < self.count:
            raise ValueError(f"shard must be a whole number from 0 to {self.count - 1} (of {self.count} shards), "
                             f"not {self.index!r}")

    def holds(self, sample_id: str) -> bool:
        return int(sample_id, 16) % self.count == self.index

    def pick(self, sample_ids: Iterable[str]) -> list[str]:
        """The ids of this shard, in the order given."""
        return [sample_id for sample_id in sample_ids if self.holds(sample_id)]

    def __str__(self) -> str:
        return f"shard {self.index + 1}/{self.count}"
