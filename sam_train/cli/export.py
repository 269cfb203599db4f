"""`sam-export CKPT --format ...`: weights for other tools (see sam_train.weights.export)."""

from __future__ import annotations

import sys

from sam_train.cli.arguments import OneLineParser
from sam_train.errors import UserError
from sam_train.weights.export import EXPORTERS, export
from sam_train.weights.safetensors_io import DTYPES


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="sam-export",
        description="Export weights from a sam-train checkpoint (or an official MAE/SAM/timm file).",
    )
    parser.add_argument(
        "checkpoint", help="Lightning .ckpt, exported .safetensors, or official .pth"
    )
    parser.add_argument("--format", required=True, choices=sorted(EXPORTERS))
    parser.add_argument("--out", default=None, help="output file (default: next to the checkpoint)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument(
        "--quantize", action="store_true", help="onnx: also write an int8 decoder_quantized.onnx"
    )
    args = parser.parse_args(argv)
    try:
        path = export(args.checkpoint, args.format, args.out, args.dtype, quantize=args.quantize)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"sam-export: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the output cannot be written (permissions, a folder, a full disk)
        print(f"sam-export: error: cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    print(f"sam-export: wrote {args.format} weights to {path}")
    if args.format == "onnx":
        print(
            f"  AnyLabeling / X-AnyLabeling: Load Custom Model -> {path}/anylabeling/model.yaml\n"
            f"  osam / labelme: register_osam_model({str(path)!r}) (docs/labelling.md)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
