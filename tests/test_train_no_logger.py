"""logger=none: the callbacks that only log are left out (Lightning refuses a learning-rate
monitor without a logger), the others stay."""

from __future__ import annotations

from conftest import compose_train
from lightning.pytorch.callbacks import LearningRateMonitor, ThroughputMonitor

from sam_train.cli.train import build_callbacks, build_loggers


def test_logger_none_drops_only_the_monitors(tmp_path):
    cfg = compose_train(["stage=mae", "logger=none"], tmp_path)
    assert build_loggers(cfg) == []
    kept = build_callbacks(cfg, has_logger=False)
    assert not [c for c in kept if isinstance(c, LearningRateMonitor | ThroughputMonitor)]
    every = build_callbacks(cfg)
    assert len(every) - len(kept) == 2
    assert {type(c) for c in kept} == {type(c) for c in every} - {
        LearningRateMonitor,
        ThroughputMonitor,
    }
