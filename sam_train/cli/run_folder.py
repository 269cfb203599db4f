"""Which folder a run writes to: a resumed run continues in its own folder, and a run that
failed before writing anything leaves no folder behind."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from sam_train.config_checks import ConfigError

# what Hydra writes into every run folder before the run starts
WRITTEN_AT_START = {".hydra", "train.log", "eval.log"}  # eval.log: sam-eval's job
FOLDER_OPTIONS = ("hydra.run.dir=", "hydra.sweep.dir=", "hparams_search=", "hydra.mode=")


def remove_if_unused(run_dir: Path, output_dir: Path | None = None) -> bool:
    """Delete `run_dir` if it holds only what Hydra wrote at start, and then its parents inside
    `output_dir` that are left empty. True when no run folder is left."""
    if not run_dir.is_dir():
        return True
    for path in run_dir.rglob("*"):
        if path.is_file() and path.relative_to(run_dir).parts[0] not in WRITTEN_AT_START:
            return False
    shutil.rmtree(run_dir)
    if output_dir is not None:
        top, parent = output_dir.resolve(), run_dir.resolve().parent
        while parent.is_relative_to(top) and not any(parent.iterdir()):
            parent.rmdir()
            if parent == top:
                break
            parent = parent.parent
    return True


def run_folder_of(checkpoint: Path) -> Path | None:
    """<run>/checkpoints/x.ckpt -> <run> when <run> is a sam-train run folder."""
    folder = checkpoint.resolve().parent.parent
    if checkpoint.resolve().parent.name == "checkpoints" and (folder / ".hydra").is_dir():
        return folder
    return None


def newest_run_with_last(overrides: list[str]) -> Path:
    """The newest run folder of the configured stage that has checkpoints/last.ckpt."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("sam_train.conf", version_base="1.3"):
        cfg = compose("train", overrides=[o for o in overrides if not o.startswith("ckpt_path=")])
    runs = Path(cfg.paths.output_dir) / cfg.stage.name
    found = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(
            f"ckpt_path=last: no run under {runs} has checkpoints/last.ckpt; give "
            "ckpt_path=<file> or hydra.run.dir=<run folder>"
        )
    return found[-1].parent.parent


def hydra_value(text: str) -> str:
    """`text` as a Hydra override value (quoted when it has characters the grammar parses)."""
    if re.fullmatch(r"[\w/.\-:+~]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_overrides(args: list[str]) -> list[str]:
    """`args` plus hydra.run.dir=<the run's folder> when they resume a run (ckpt_path=<a file
    in a run's checkpoints/>, or ckpt_path=last) without naming a folder themselves."""
    if any(a.startswith("-") or a.startswith(FOLDER_OPTIONS) for a in args):
        return args  # --help, --cfg, multirun, or a folder chosen by the user
    value = next((a.split("=", 1)[1] for a in args if a.startswith("ckpt_path=")), None)
    if value in (None, "", "null", "None"):
        return args
    try:
        folder = newest_run_with_last(args) if value == "last" else run_folder_of(Path(value))
    except ConfigError:
        raise
    except Exception:  # a bad override: Hydra reports it when the run composes its config
        return args
    if folder is None:
        return args
    print(f"[sam-train] resuming in the run's own folder: {folder}", flush=True)
    return [*args, f"hydra.run.dir={hydra_value(str(folder))}"]


def keep_first_record(args: list[str]) -> list[str]:
    """`args` plus hydra.output_subdir=.hydra/resume-<time> when the run writes into a folder
    that already holds a run's `.hydra/config.yaml` (a resume in the run's own folder): the
    record of how the run was started stays as it was, each resumed part's config beside it."""
    if any(a.startswith("-") or a.startswith("hydra.output_subdir=") for a in args):
        return args
    value = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
    if value is None:
        return args
    folder = Path(value[1:-1].replace("\\'", "'") if value[:1] == "'" == value[-1:] else value)
    if not (folder / ".hydra" / "config.yaml").is_file():
        return args
    return [*args, f"hydra.output_subdir=.hydra/resume-{time.strftime('%Y%m%d_%H%M%S')}"]
