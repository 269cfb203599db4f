"""Skipped samples, whatever the reader: the exception a reader raises for one unusable
sample, and the one counter every reader adds to and `data/skipped` is logged from.

The counter lives in shared memory, so the training process sees what its DataLoader workers
counted; `sam_train.lit.callbacks.SkippedSamplesLogger` logs it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp

log = logging.getLogger(__name__)


class SkipSample(Exception):
    """One sample is unusable; `reason` is the key it is counted under.

    also: finer counts gathered before giving up (e.g. per annotation, in converter manifests).
    """

    def __init__(self, reason: str, detail: str = "", also: dict | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.also = dict(also or {})


class SkipCounter:
    """Counts of skipped samples by reason, in shared memory: DataLoader workers add, the
    training process reads (`total`, `as_dict()`) and logs them as `data/skipped`."""

    REASONS = ("corrupt", "no_masks", "shard_error", "other")

    def __init__(self) -> None:
        self._counts = mp.Array("q", len(self.REASONS))
        self._local = 0  # warnings are rate-limited per process

    def add(self, reason: str, where: str, err: BaseException | None = None) -> None:
        idx = self.REASONS.index(reason) if reason in self.REASONS else len(self.REASONS) - 1
        with self._counts.get_lock():
            self._counts[idx] += 1
        self._local += 1
        if self._local <= 10 or self._local % 100 == 0:
            log.warning(
                "skipped sample %s (%s): %s [%d skipped in this process]",
                where,
                reason,
                err,
                self._local,
            )

    @property
    def total(self) -> int:
        return int(sum(self._counts[:]))

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.REASONS, (int(v) for v in self._counts[:])))
