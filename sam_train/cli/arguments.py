"""The argument style of the tools that take flags (sam-export, sam-predict, sam-prep, sam-app).

One parser class whose every mistake is one line (`prog: error: ...`, exit 2), and the options
the tools share, spelled and explained the same way in each: the checkpoint is the first
positional argument, `--out` is what a tool writes, `--image` one image file, `--images` a
folder of images. (sam-train and sam-eval take Hydra's `key=value` overrides instead.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from sam_train.errors import exit_with_error

CHECKPOINT_HELP = (
    "a sam-train Lightning .ckpt, a sam-export .safetensors, an official .pth or a Hugging "
    "Face folder"
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one line that points at --help instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        exit_with_error(self.prog, f"{message} (see {self.prog} --help)")


def add_checkpoint(parser: argparse.ArgumentParser, what: str = "") -> None:
    """The checkpoint, the first positional argument of every tool that reads one; `what`
    narrows it (e.g. "of a SAM")."""
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help=f"{CHECKPOINT_HELP}{' ' + what if what else ''}"
    )


def add_out(parser: argparse.ArgumentParser, default: Path | None, what: str) -> None:
    """`--out PATH`: where the tool writes (`what` says what and the default)."""
    parser.add_argument("--out", type=Path, default=default, metavar="PATH", help=what)


def add_device(parser: argparse.ArgumentParser) -> None:
    """`--device`: where the model runs (cpu, cuda, cuda:1, mps), checked before it loads."""
    parser.add_argument(
        "--device",
        type=device,
        default="cpu",
        metavar="DEVICE",
        help="where the model runs: cpu (default), cuda, cuda:N, mps",
    )


def device(text: str) -> str:
    """A torch device that exists on this machine, or an `ArgumentTypeError` saying why not."""
    import torch

    try:
        kind = torch.device(text).type
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device (cpu, cuda, cuda:N, mps)"
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is visible here; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no Apple GPU (MPS) here; use --device cpu")
    return text


def add_images_folder(parser: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    """`--images DIR`: a folder of images (recursive where the tool says so)."""
    parser.add_argument("--images", type=Path, metavar="DIR", required=required, help=what)


def numbers(text: str, count: int, what: str, example: str) -> list[float]:
    """`count` comma-separated finite numbers, or an `ArgumentTypeError` naming the format."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not {example}")
    return values
