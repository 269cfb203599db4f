"""`make demo`'s claim, end to end: its two stages, as the Makefile runs them, give a SAM that
segments the held-out sample images (minutes of CPU: a `long` test, `make test-long`)."""

from __future__ import annotations

import csv

import pytest
from conftest import run_cli


def _last_validation(metrics_csv) -> dict[str, float]:
    rows = [r for r in csv.DictReader(open(metrics_csv)) if r.get("val/miou_point_confident")]
    return {k: float(v) for k, v in rows[-1].items() if v and k.startswith("val")}


@pytest.mark.long
def test_the_demo_recipe_segments_held_out_images_and_more_clicks_help(tmp_path) -> None:
    for args in (
        ["experiment=demo_mae", f"hydra.run.dir={tmp_path}/mae"],
        [
            "stage=sam",
            "experiment=demo_sam",
            f"hydra.run.dir={tmp_path}/sam",
            f"model.init_from={tmp_path}/mae/checkpoints/last.ckpt",
        ],
    ):
        run = run_cli("sam-train", *args, env={"HF_HUB_OFFLINE": "1"}, timeout=None)
        assert run.returncode == 0, run.stderr[-2000:]
    after = _last_validation(tmp_path / "sam" / "csv" / "metrics.csv")
    print("demo stage 2 after training:", after)
    # before training both are ~0.04; the demo's measured runs end at 0.40-0.49 for one point
    # and 0.37-0.48 for one box (README.md, "What to expect")
    assert after["val/miou_point_confident"] > 0.3, after
    assert after["val/miou_box"] > 0.3, after
    assert after["val/miou_click_5"] > after["val/miou_click_1"] + 0.03, after
