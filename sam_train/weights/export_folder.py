"""Exports that are a folder (ONNX, Hugging Face): what may be replaced by a new one."""

from __future__ import annotations

from pathlib import Path

from sam_train.weights.checkpoints import WeightsError


def check_output_folder(out: Path, marker: str, fmt: str) -> None:
    """Folder exports replace `out` whole: only a new or empty folder, or a previous export of
    the same format (it holds `marker`), may be replaced."""
    if out.exists() and not out.is_dir():
        raise WeightsError(f"--format {fmt} writes a folder; {out} is a file (pick --out DIR/)")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).exists():
        raise WeightsError(
            f"--out {out} is a folder with other files in it; --format {fmt} replaces its "
            "folder whole, so pick a new folder name"
        )
