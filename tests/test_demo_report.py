"""`make demo`'s before/after table and the ARC2017 photo it scores on its own."""

from __future__ import annotations

import pytest
import torch

from sam_train.demo_report import main, table
from sam_train.lit.photo_metrics import sample_photo


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join("" if v is None else str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def test_table_shows_first_and_last_validation_of_both_stages(tmp_path) -> None:
    write_csv(
        tmp_path / "mae" / "csv" / "metrics.csv",
        ["epoch", "step", "train/loss", "val/loss"],
        [[0, 0, None, 0.9], [0, 5, 0.8, None], [1, 10, None, 0.55]],
    )
    header = ["epoch", "step", "val/miou_point_confident", "val/miou_box"]
    header += ["val/miou_click_1", "val/miou_click_2", "val_arc2017/miou_point_confident"]
    write_csv(
        tmp_path / "sam" / "csv" / "metrics.csv",
        header,
        [[0, 0, 0.04, 0.05, 0.04, 0.03, 0.02], [3, 90, 0.45, 0.61, 0.45, 0.52, 0.33]],
    )
    text = table(tmp_path)
    assert "0.900   0.550" in text  # stage 1 before -> after
    assert "0.040   0.450" in text and "0.050   0.610" in text
    assert "after  0.45 0.52" in text  # the click curve after training
    assert "ARC2017" in text and "0.020   0.330" in text


def test_no_demo_folder_is_a_clear_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "none")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("demo_report: error: no demo runs under")
    assert "make demo" in err[0]


def test_arc2017_photo_is_prepared_like_the_sample_data() -> None:
    image, masks, boxes, (h, w) = sample_photo("arc2017", 64)
    assert image.shape == (1, 3, 64, 64) and (h, w) == (48, 64)  # 480 x 640, longest side 64
    assert masks.shape == (8, 64, 64) and not masks[:, h:].any()  # 8 real masks, no padding
    assert torch.all(boxes[:, 2] > boxes[:, 0])
