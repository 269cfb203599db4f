"""Lightning's console output as a run shows it: its own lines once, on stderr, and without the
known-benign third-party messages every run would print (each filtered by its own text, so any
other warning still shows)."""

from __future__ import annotations

import logging
import warnings

# Lightning's own pytree helper calls an API that torch 2.14 deprecated; nothing we can change.
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# A run resumed in its own folder (what sam-train does) finds its checkpoints there, by design.
CHECKPOINT_DIR_NOT_EMPTY = r"Checkpoint directory .* exists and is not empty"
# ShardStream gives each loader worker its own seed and an exact share (batches_per_worker),
# which is what this warning asks for; it cannot see that.
ITERABLE_WITH_LEN = r"Your `IterableDataset` has `__len__` defined"
# A run without validation data says so in its own words at start (cli/train.py).
NO_VALIDATION_DATA = r"Total length of .* across ranks is zero"
# Lightning's info-level lines: an advert for its cloud logger, a note on a call our optimiser
# set-up makes on purpose (the schedule needs the number of steps), and the notice that our
# model summary replaces its own.
DROPPED_INFO = (
    "💡 Tip: For seamless cloud logging",
    "Loading `train_dataloader` to estimate",
    "Trainer already configured with model summary callbacks",
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(DROPPED_INFO)


def configure_lightning_output() -> None:
    """Call before importing Lightning. Lightning prints through its own handler when it is
    imported before logging is configured; imported after Hydra has configured logging (as
    `sam-train` does, to start fast), its lines would also reach Hydra's handlers, twice."""
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION)
    warnings.filterwarnings("ignore", message=CHECKPOINT_DIR_NOT_EMPTY)
    warnings.filterwarnings("ignore", message=ITERABLE_WITH_LEN)
    warnings.filterwarnings("ignore", message=NO_VALIDATION_DATA)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.addFilter(_DropLines())
            logger.addHandler(handler)
        logger.propagate = False
