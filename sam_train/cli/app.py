"""`sam-app CHECKPOINT [--images DIR] [--port 7860]`: a local page to try a trained SAM by hand.

Pick or upload an image, click foreground / background points or drag a box, and see the three
candidate masks with their scores; download one as PNG or COCO RLE. The image is embedded once;
each click runs only the prompt encoder and mask decoder. Needs the `app` extra
(pip install 'sam_train[app]').
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from sam_train.cli.arguments import OneLineParser, add_checkpoint, add_device, add_images_folder
from sam_train.errors import UsageError, run_tool

PROG = "sam-app"


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint(parser, "of a SAM (stage 2)")
    add_images_folder(parser, "folder of images to pick from")
    parser.add_argument("--port", type=int, default=7860, metavar="N", help="0: any free port")
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1: this machine only")
    parser.add_argument(
        "--cache", type=int, default=8, metavar="N", help="image embeddings kept in memory"
    )
    parser.add_argument(
        "--decoder",
        default="torch",
        choices=["torch", "onnx", "onnx-int8"],
        help="what runs a click: PyTorch (the predictor's exact masks), or the exported ONNX "
        "decoder in onnxruntime (less CPU per click; onnx-int8 quantised)",
    )
    add_device(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(PROG, serve, args)


def serve(args: argparse.Namespace) -> int:
    """Check the arguments, take the port, load the model, serve until Ctrl-C."""
    if not Path(args.checkpoint).exists():
        raise UsageError(f"checkpoint {args.checkpoint} does not exist")
    if args.images is not None and not args.images.is_dir():
        raise UsageError(f"--images {args.images} is not a folder")
    try:  # the port first: a busy one is one line, before the model loads or a URL is shown
        sock = bind(args.host, args.port)
    except OSError as err:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port} ({err.strerror}); "
            "pick another --port (e.g. --port 0 for any free one)"
        ) from err
    try:
        import uvicorn

        from sam_train.app.server import ImageStore, SegmentService
        from sam_train.app.web import create_app
    except ImportError as err:
        raise UsageError(f"{err.name} is missing; pip install 'sam_train[app]'") from err
    try:
        service = SegmentService(
            args.checkpoint,
            ImageStore(args.images),
            cache_size=args.cache,
            decoder=args.decoder,
            device=args.device,
        )
    except ImportError as err:
        raise UsageError(
            f"--decoder {args.decoder} needs {err.name}: pip install 'sam_train[onnx]'"
        ) from err
    if service.load_error:  # the page shows it too, and the server still starts
        print(f"{PROG}: warning: {service.load_error}", file=sys.stderr)
    port = sock.getsockname()[1]
    print(f"{PROG}: http://{args.host}:{port}/  (Ctrl-C stops)", flush=True)
    config = uvicorn.Config(create_app(service), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (OSError when it is taken); uvicorn serves on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT, not a listener
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    sys.exit(main())
