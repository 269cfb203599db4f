"""Inference: load a trained or exported SAM, set an image once, prompt it many times.

    predictor = SamPredictor.from_checkpoint("outputs/sam/<run>/export/sam.safetensors")
    predictor.set_image(rgb)                      # HxWx3 uint8; embeds the image once
    masks, scores, logits = predictor.predict(point_coords=[[320, 240]], point_labels=[1])

Text prompts (a model trained with `prompt.text.enabled=true`): give the predictor the CLIP it
was trained with, then prompt with a phrase, alone or with points / boxes:

    predictor = SamPredictor.from_checkpoint(path, text_encoder=ClipPromptEncoder.load(
        "ViT-B-32", "/path/to/open_clip_model.safetensors"))
    masks, scores, _ = predictor.predict(text="a dog", multimask_output=False)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from sam_train.models.pixels import normalise_pixels
from sam_train.models.sam.sam import Sam
from sam_train.weights.sam_loading import load_sam


def resized_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(h, w) scaled so that the long side is `long_side`, each rounded half up (as
    segment-anything's ResizeLongestSide does; Python's round() would round half to even)."""
    scale = long_side / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


class SamPredictor:
    """Prompted masks for one image at a time; the image embedding is computed once per image."""

    def __init__(
        self, model: Sam, device: str | torch.device = "cpu", text_encoder: nn.Module | None = None
    ) -> None:
        """model: the SAM. device: where it runs. text_encoder: a `ClipPromptEncoder` for
        `predict(text=...)` (the CLIP the model's text branch was trained with)."""
        self.model = model.to(device).eval()
        self.text_encoder = text_encoder.to(device).eval() if text_encoder is not None else None
        self.device = torch.device(device)
        self.image_size = model.image_encoder.img_size
        self._embedding: torch.Tensor | None = None
        self._orig_hw: tuple[int, int] = (0, 0)
        self._input_hw: tuple[int, int] = (0, 0)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "cpu",
        text_encoder: nn.Module | None = None,
        adapter: str | Path | None = None,
    ) -> SamPredictor:
        """`path`: a SAM checkpoint, or with `adapter` (`sam-export --format adapter`) the base
        checkpoint that adapter was trained from."""
        if adapter is not None:
            from sam_train.weights.adapters import load_sam_with_adapter

            return cls(load_sam_with_adapter(path, adapter), device, text_encoder)
        return cls(load_sam(path), device, text_encoder)

    def encode_text(self, phrases: str | list[str]) -> torch.Tensor:
        """CLIP text embeddings [T, E] of one phrase or several (one prompt token each)."""
        if self.text_encoder is None:
            raise ValueError(
                "predict(text=...) needs the CLIP the model was trained with: "
                "SamPredictor(model, text_encoder=ClipPromptEncoder.load(clip, pretrained))"
            )
        return self.text_encoder.encode_text([phrases] if isinstance(phrases, str) else phrases)

    @torch.no_grad()
    def set_image(self, image: np.ndarray | Image.Image) -> None:
        """RGB image (HxWx3 uint8 array or PIL): resize the long side, normalise, pad, embed.

        Exactly segment-anything's preprocessing, so that masks agree with its `SamPredictor`:
        the short side is rounded half up, the image resized with PIL's bilinear filter, and
        normalised in 0-255 units, as the model records (`Sam.pixel_norm`: SAM's mean / std,
        or LiteMedSAM's min-max of the resized image).
        """
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        pil = pil.convert("RGB")
        w, h = pil.size
        nh, nw = resized_shape(h, w, self.image_size)
        resized = torch.from_numpy(np.asarray(pil.resize((nw, nh), Image.BILINEAR)).copy())
        x = normalise_pixels(resized.permute(2, 0, 1), self.model.pixel_norm)  # [3, nh, nw]
        x = F.pad(x, (0, self.image_size - nw, 0, self.image_size - nh))
        self._embedding = self.model.embed_images(x[None].to(self.device))
        self._orig_hw, self._input_hw = (h, w), (nh, nw)

    @property
    def embedding(self) -> torch.Tensor | None:
        """The current image's embedding [1, C, h, w] (None before `set_image`)."""
        return self._embedding

    @property
    def original_size(self) -> tuple[int, int]:
        """(h, w) of the current image."""
        return self._orig_hw

    @property
    def input_hw(self) -> tuple[int, int]:
        """(h, w) of the current image resized inside the model's square input."""
        return self._input_hw

    def _to_input(self, coords: np.ndarray) -> torch.Tensor:
        """(x, y) pairs in image pixels -> pixels of the resized image, each axis scaled by its
        own (rounded) resize factor."""
        xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2).copy()
        xy[:, 0] *= self._input_hw[1] / self._orig_hw[1]
        xy[:, 1] *= self._input_hw[0] / self._orig_hw[0]
        shape = np.asarray(coords).shape
        return torch.as_tensor(xy.reshape(shape), dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def predict(
        self,
        point_coords: np.ndarray | list | None = None,
        point_labels: np.ndarray | list | None = None,
        box: np.ndarray | list | None = None,
        mask_input: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        multimask_output: bool = True,
        text: str | list[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Masks for one prompt set, in original image pixels.

        point_coords [N, 2] (x, y) with point_labels [N] (1 foreground, 0 background);
        box [4] xyxy; mask_input [1, 4h, 4w] low-res logits of a previous call; text_embeds
        [T, E] for a model with a text branch, or `text`, a phrase encoded by the predictor's
        `text_encoder` ("a dog"; alone, or with points / a box). Returns masks [m, H, W] bool, scores [m], and
        low-res logits [m, 4h, 4w] (feed one back as `mask_input`).
        """
        if self._embedding is None:
            raise RuntimeError("call set_image(image) before predict(...)")
        if text is not None:
            text_embeds = self.encode_text(text)
        points, pad_points = None, None
        if point_coords is not None:
            labels = torch.as_tensor(np.asarray(point_labels), device=self.device).long()[None]
            points = (self._to_input(point_coords)[None], labels)
        boxes = self._to_input(np.asarray(box).reshape(1, 4)) if box is not None else None
        masks_in = mask_input[None].to(self.device) if mask_input is not None else None
        text_in = text_embeds[None].to(self.device) if text_embeds is not None else None
        if text_in is not None and points is None and boxes is None:
            # text alone: two padding points, the token layout text prompts were trained with
            points = (
                torch.zeros(1, 2, 2, device=self.device),
                torch.full((1, 2), -1, device=self.device),
            )
            pad_points = False
        logits, scores = self.model.decode(
            self._embedding,
            points=points,
            boxes=boxes,
            mask_inputs=masks_in,
            text_embeds=text_in,
            multimask_output=multimask_output,
            pad_points=pad_points,
        )  # [1, m, 4h, 4w], [1, m]
        full = F.interpolate(
            logits, size=(self.image_size,) * 2, mode="bilinear", align_corners=False
        )
        full = full[..., : self._input_hw[0], : self._input_hw[1]]
        full = F.interpolate(full, size=self._orig_hw, mode="bilinear", align_corners=False)
        masks = (full[0] > self.model.mask_threshold).cpu().numpy()
        return masks, scores[0].cpu().numpy(), logits[0]
