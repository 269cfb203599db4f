"""`python -m sam_train.demo_report outputs/demo`: the demo's before/after table, read from the
two runs' `csv/metrics.csv` (stage 1: held-out MAE loss; stage 2: one-point, one-box and
click-curve mIoU on the validation images, and on the real ARC2017 photo alone)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from sam_train.errors import UsageError, run_tool

STAGE1 = [("val/loss", "stage 1 MAE loss, held-out photos (lower: better)")]
STAGE2 = [("miou_point_confident", "1 point"), ("miou_box", "1 box")]
WIDTH = 52


def validation_rows(path: Path) -> list[dict[str, float]]:
    """Every logged validation of a run (rows with a `val` key), in step order."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            vals = {k: float(v) for k, v in row.items() if v not in ("", None) and "val" in k}
            if vals:
                vals["step"] = float(row.get("step") or 0)
                rows.append(vals)
    return rows


def first_last(rows: list[dict[str, float]], key: str) -> tuple[float | None, float | None]:
    found = [r[key] for r in rows if key in r]
    return (found[0], found[-1]) if found else (None, None)


def _fmt(v: float | None) -> str:
    return "   -  " if v is None else f"{v:6.3f}"


def clicks(rows: list[dict[str, float]], prefix: str, which: int) -> str:
    found = [r for r in rows if f"{prefix}miou_click_1" in r]
    if not found:
        return "-"
    row = found[which]
    values, i = [], 1
    while f"{prefix}miou_click_{i}" in row:
        values.append(f"{row[f'{prefix}miou_click_{i}']:.2f}")
        i += 1
    return " ".join(values)


def table(demo: Path) -> str:
    lines = [f"{'':{WIDTH}s}  before   after"]
    mae = demo / "mae" / "csv" / "metrics.csv"
    if mae.is_file():
        rows = validation_rows(mae)
        for key, label in STAGE1:
            before, after = first_last(rows, key)
            lines.append(f"{label:{WIDTH}s}  {_fmt(before)}  {_fmt(after)}")
    sam = demo / "sam" / "csv" / "metrics.csv"
    if sam.is_file():
        rows = validation_rows(sam)
        for prefix, where in (("val/", "validation images"), ("val_arc2017/", "ARC2017 photo")):
            for key, label in STAGE2:
                before, after = first_last(rows, prefix + key)
                text = f"stage 2 mIoU, {where}: {label}"
                lines.append(f"{text:{WIDTH}s}  {_fmt(before)}  {_fmt(after)}")
            label = f"stage 2 mIoU, {where}: clicks 1..N"
            lines.append(f"{label:{WIDTH}s}  before {clicks(rows, prefix, 0)}")
            lines.append(f"{'':{WIDTH}s}  after  {clicks(rows, prefix, -1)}")
    return "\n".join(lines)


def report(demo: Path) -> int:
    if not (demo / "mae").is_dir() and not (demo / "sam").is_dir():
        raise UsageError(f"no demo runs under {demo} (run `make demo`)")
    print(table(demo))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return run_tool("demo_report", report, Path(args[0] if args else "outputs/demo"))


if __name__ == "__main__":
    sys.exit(main())
