"""`sam-export CHECKPOINT --format ...`: weights for other tools (see sam_train.weights.export)."""

from __future__ import annotations

import sys

from sam_train.cli.arguments import OneLineParser, add_checkpoint, add_out
from sam_train.errors import UsageError, UserError, run_tool
from sam_train.weights.export import EXPORTERS, export
from sam_train.weights.safetensors_io import DTYPES

PROG = "sam-export"


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Export weights from a sam-train checkpoint (or an official MAE/SAM/timm file).",
    )
    add_checkpoint(parser)
    parser.add_argument("--format", required=True, choices=sorted(EXPORTERS))
    add_out(parser, None, "output file or folder (default: next to the checkpoint)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument(
        "--quantize", action="store_true", help="onnx: also write an int8 decoder_quantized.onnx"
    )
    return parser


def write_export(checkpoint: str, fmt: str, out, dtype: str, quantize: bool):
    """`export`, with an output that cannot be written (permissions, a file where a folder
    goes, a full disk) reported as the user's."""
    try:
        return export(checkpoint, fmt, out, dtype, quantize=quantize)
    except OSError as err:
        if isinstance(err, UserError | FileNotFoundError):
            raise
        raise UsageError(f"cannot write {err.filename}: {err.strerror}") from err


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = run_tool(
        PROG, write_export, args.checkpoint, args.format, args.out, args.dtype, args.quantize
    )
    print(f"{PROG}: wrote {args.format} weights to {path}")
    if args.format == "onnx":
        print(
            f"  AnyLabeling / X-AnyLabeling: Load Custom Model -> {path}/anylabeling/model.yaml\n"
            f"  osam / labelme: register_osam_model({str(path)!r}) (docs/labelling.md)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
