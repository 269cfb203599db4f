"""The page's clicks through onnxruntime (`sam-app --decoder onnx` / `onnx-int8`): the
decoder graph of `sam-export --format onnx`, exported at start-up from the loaded model.

The image encoder stays in PyTorch (once per image); each click feeds the embedding to the
official decoder interface. About 1.5x (fp32) to 1.8x (int8) less CPU per click than the
PyTorch decoder at sam_vit_b (benchmarks/bench_deploy.py); masks agree with
`SamPredictor.predict` to rounding (fp32) or to the quantisation error (int8).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from sam_train.predictor import resized_shape
from sam_train.weights.onnx_export import export_decoder, quantize_decoder


class OnnxClickDecoder:
    """Masks for one prompt on an embedded image, through onnxruntime."""

    def __init__(self, sam, quantized: bool = False) -> None:
        import onnxruntime as ort

        self.image_size = sam.image_encoder.img_size
        self._dir = tempfile.TemporaryDirectory(prefix="sam_app_onnx_")
        path = export_decoder(sam.eval(), Path(self._dir.name) / "decoder.onnx")
        if quantized:
            path = quantize_decoder(path, path.with_name("decoder_quantized.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def predict(
        self,
        embedding: torch.Tensor,
        orig_hw: tuple[int, int],
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The 3 multimask outputs: masks [3, H, W] bool and scores [3]."""
        # per axis, by the rounded resized size, as SamPredictor (and segment-anything) do
        nh, nw = resized_shape(*orig_hw, self.image_size)
        scale = np.array([nw / orig_hw[1], nh / orig_hw[0]], np.float32)
        coords = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32)
        labs = np.zeros(0, np.float32) if labels is None else np.asarray(labels, np.float32)
        if box is not None:  # a box is two corner points labelled 2 and 3
            extra, extra_labels = np.asarray(box, np.float32).reshape(2, 2), [2, 3]
        else:  # points alone end in a padding point
            extra, extra_labels = np.zeros((1, 2), np.float32), [-1]
        coords = np.concatenate([coords * scale, extra * (scale if box is not None else 1)])
        labs = np.concatenate([labs, np.asarray(extra_labels, np.float32)])
        grid = embedding.shape[-1]
        masks, iou, _ = self.session.run(
            None,
            {
                "image_embeddings": embedding.cpu().numpy(),
                "point_coords": coords[None].astype(np.float32),
                "point_labels": labs[None].astype(np.float32),
                "mask_input": np.zeros((1, 1, 4 * grid, 4 * grid), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
                "orig_im_size": np.asarray(orig_hw, np.float32),
            },
        )
        return masks[0, 1:] > 0.0, iou[0, 1:]  # output 0 is the single-mask one
