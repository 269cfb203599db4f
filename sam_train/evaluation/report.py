"""What `sam-eval` leaves behind: eval.json (every figure, the config, the checkpoint's sha256),
the click curve, an IoU histogram, a page of the worst cases, and a table on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sam_train.files import atomic_path, write_text_atomic
from sam_train.viz.mae_grid import save_png
from sam_train.viz.sam_masks import click_curve_png, tile_grid

FIGURES_OF_TASK = {
    "point": ("miou_point", "miou_random_point"),
    "box": ("miou_box", "coco_mask_ap"),
    "clicks": ("miou_click_", "noc"),
    "everything": ("ar100", "ar1000", "masks_per_image"),
}


def task_figures(figures: dict[str, float], tasks: list[str]) -> dict[str, float]:
    """The figures the asked tasks produce (validation computes a few more on the way)."""
    prefixes = tuple(p for t in tasks for p in FIGURES_OF_TASK[t])
    return {k: v for k, v in figures.items() if k.startswith(prefixes)}


def write_report(
    out_dir: Path,
    figures: dict[str, float],
    per_mask: dict[str, np.ndarray],
    worst: list[tuple[float, np.ndarray]],
    tasks: list[str],
    config: dict,
    checkpoint: dict,
    data: dict | None = None,
) -> dict:
    """data: what was scored (`description`, `val_path`) and its masks: read, scored, left
    out by reason (recorded as they are in eval.json)."""
    figures = task_figures(figures, tasks)
    report = {
        "checkpoint": checkpoint,
        "data": data,
        "tasks": tasks,
        "num_masks": int(len(per_mask["iou_point_confident"])),
        "figures": figures,
        "config": config,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "eval.json", json.dumps(report, indent=2))
    clicks = [figures[f"miou_click_{i}"] for i in range(1, 100) if f"miou_click_{i}" in figures]
    if len(clicks) > 1:
        click_curve_png(clicks, out_dir / "click_curve.png", title="mIoU after N clicks")
    kinds = {"point": ("iou_point_confident", "iou_random_point_confident"), "box": ("iou_box",)}
    histograms = {n: per_mask[n] for t in tasks for n in kinds.get(t, ()) if n in per_mask}
    if histograms:
        iou_histogram_png(histograms, out_dir / "iou_histogram.png")
    if worst:
        rows = [("", [p for _, p in worst[i : i + 4]]) for i in range(0, len(worst), 4)]
        page = tile_grid(rows, "worst cases: one centre point, lowest IoU first", ("point",))
        save_png(page, out_dir / "worst_cases.png")
    print_table(report, out_dir)
    return report


def iou_histogram_png(ious: dict[str, np.ndarray], path: Path) -> None:
    """Per-mask IoU distributions, one outline histogram per prompt kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    bins = np.linspace(0, 1, 21)
    for name, values in ious.items():
        label = f"{name.removeprefix('iou_')} (mean {values.mean():.3f})"
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=label)
    ax.set_xlabel("IoU with ground truth")
    ax.set_ylabel("masks")
    ax.legend(fontsize=8)
    ax.set_title("per-mask IoU")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def print_table(report: dict, out_dir: Path) -> None:
    ck = report["checkpoint"]
    lines = [
        f"[sam-eval] {ck['path']} (sha256 {ck['sha256'][:12]}), {report['num_masks']} masks",
        f"  {'figure':<32}{'value':>10}",
    ]
    lines += [f"  {name:<32}{value:>10.4f}" for name, value in report["figures"].items()]
    lines.append(f"[sam-eval] eval.json and plots in {out_dir.resolve()}")
    print("\n".join(lines), flush=True)
