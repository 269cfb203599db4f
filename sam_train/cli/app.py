"""`sam-app CKPT [--images DIR] [--port 7860]`: a local page to try a trained SAM by hand.

Pick or upload an image, click foreground / background points or drag a box, and see the three
candidate masks with their scores; download one as PNG or COCO RLE. The image is embedded once;
each click runs only the prompt encoder and mask decoder. Needs the `app` extra
(pip install 'sam_train[app]').
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sam-app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", help="stage-2 .ckpt, exported SAM (.safetensors/.pth/hf folder)"
    )
    parser.add_argument("--images", type=Path, default=None, help="folder of images to pick from")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1: this machine only")
    parser.add_argument("--cache", type=int, default=8, help="image embeddings kept in memory")
    parser.add_argument(
        "--decoder",
        default="torch",
        choices=["torch", "onnx", "onnx-int8"],
        help="what runs a click: PyTorch (the predictor's exact masks), or the exported ONNX "
        "decoder in onnxruntime (~1.5x less CPU; onnx-int8 ~1.8x, quantised)",
    )
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).exists():
        print(f"sam-app: error: checkpoint {args.checkpoint} does not exist", file=sys.stderr)
        return 2
    if args.images is not None and not args.images.is_dir():
        print(f"sam-app: error: --images {args.images} is not a folder", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from sam_train.app.server import ImageStore, SegmentService
        from sam_train.app.web import create_app
    except ImportError as err:
        print(
            f"sam-app: error: {err.name} is missing; pip install 'sam_train[app]'", file=sys.stderr
        )
        return 2
    try:
        service = SegmentService(
            args.checkpoint, ImageStore(args.images), cache_size=args.cache, decoder=args.decoder
        )
    except ImportError as err:
        print(
            f"sam-app: error: --decoder {args.decoder} needs {err.name}: "
            "pip install 'sam_train[onnx]'",
            file=sys.stderr,
        )
        return 2
    if service.load_error:  # the page shows it too
        print(f"sam-app: error: {service.load_error}", file=sys.stderr)
    print(f"sam-app: http://{args.host}:{args.port}/  (Ctrl-C stops)", flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
