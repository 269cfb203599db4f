"""CLIP for SAM's text prompts: an open_clip model as a plain nn.Module.

SAM (Kirillov et al., 2023, section 7.5 / appendix D.5) trains text prompts without text labels:
for each large enough mask, the CLIP *image* embedding of the mask's region is the prompt; at
inference the CLIP *text* embedding of a phrase takes its place (CLIP puts both in one space).
`ClipPromptEncoder` gives both, L2-normalised; the prompt encoder's `text_proj` maps them to a
sparse token. This module is not part of `Sam`: exports never carry a frozen CLIP copy.

Loading (`load_open_clip`): an open_clip model name (or a model-config .json file) with a
pretrained tag or a local checkpoint path. OpenAI weights use QuickGELU: with a tag open_clip
switches it on; with a local file of OpenAI weights name the `-quickgelu` model variant.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.errors import UserError
from sam_train.models.pixels import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

LIST_MODELS_HINT = 'python -c "import open_clip; print(open_clip.list_models())"'


class ClipLoadError(UserError, RuntimeError):
    """The CLIP model or its weights cannot be loaded; the message names the fix."""


def clip_model_name(clip: str) -> str:
    """An open_clip model name; a `.json` model config is registered under its file stem."""
    import open_clip

    path = Path(clip).expanduser()
    if clip.endswith(".json"):
        if not path.is_file():
            raise ClipLoadError(f"CLIP model config {clip!r} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    if clip not in open_clip.list_models():
        raise ClipLoadError(
            f"unknown open_clip model {clip!r}; list the valid names with `{LIST_MODELS_HINT}` "
            "(e.g. ViT-B-32, ViT-L-14), or give a model-config .json file"
        )
    return clip


def load_open_clip(
    clip: str, pretrained: str | None, cache_dir: str | None = None
) -> tuple[nn.Module, object, str]:
    """(open_clip model, tokenizer, model name).

    Args:
        clip: open_clip model name (`open_clip.list_models()`) or a model-config .json path.
        pretrained: a tag of that model (`open_clip.list_pretrained_tags_by_model(name)`), a
            local checkpoint file, or None / "none" for random weights (tests only).
        cache_dir: where open_clip looks for (and downloads) tagged weights.
    """
    import open_clip

    name = clip_model_name(clip)
    if pretrained in (None, "", "none", "None"):
        log.warning("CLIP %s with random weights (prompt.text.pretrained not set)", name)
        model = open_clip.create_model(name, pretrained=None)
    elif Path(pretrained).expanduser().is_file():
        model = open_clip.create_model(name, pretrained=str(Path(pretrained).expanduser()))
    elif open_clip.get_pretrained_cfg(name, pretrained):
        try:
            model = open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir)
        except Exception as err:  # open_clip raises RuntimeError for every download failure
            raise ClipLoadError(
                f"the weights of open_clip {name} / {pretrained!r} are not available here "
                f"({str(err)[:160]}...). Without network access (HF_HUB_OFFLINE=1) only cached "
                "weights load: download them once where there is network, or pass a local "
                "checkpoint file: prompt.text.pretrained=/path/to/open_clip_model.safetensors"
            ) from err
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ClipLoadError(
            f"prompt.text.pretrained={pretrained!r} is neither a file nor a pretrained tag of "
            f"{name} (tags: {tags}); give a tag or a local checkpoint path"
        )
    return model, open_clip.get_tokenizer(name), name


def region_crops(
    images: torch.Tensor,
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    out_size: int,
    margin: float = 0.25,
    background: float = 0.5,
) -> torch.Tensor:
    """Square crops around masks, in [0, 1] RGB, background dimmed.

    Args:
        images: [B, 3, S, S] normalised with IMAGENET_MEAN / STD (padding is zeros).
        masks: [K, S, S] bool. boxes: [K, 4] xyxy pixels. image_index: [K] image of each mask.
        out_size: crop side in pixels (the CLIP input size).
        margin: the crop's side is the box's longer side x (1 + margin), centred on the box.
        background: brightness kept outside the mask (1 = untouched, 0 = black).

    Returns [K, 3, out_size, out_size].
    """
    k, size = masks.shape[0], images.shape[-1]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [K, 2]
    side = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1).clamp_min(1.0) * (1 + margin)  # [K]
    theta = torch.zeros(k, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = side / size
    theta[:, :, 2] = 2 * centre / size - 1
    grid = F.affine_grid(theta, [k, 1, out_size, out_size], align_corners=False)  # [K, o, o, 2]
    crops = F.grid_sample(images.float().index_select(0, image_index), grid, align_corners=False)
    inside = F.grid_sample(masks[:, None].float(), grid, align_corners=False)  # [K, 1, o, o]
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    rgb = (crops * std + mean).clamp(0, 1)
    return rgb * (inside + (1 - inside) * background)


class ClipPromptEncoder(nn.Module):
    """CLIP text and region embeddings for text prompts (L2-normalised, width `embed_dim`).

    Args:
        model: an open_clip CLIP model. tokenizer: its tokenizer.
        freeze: no gradients and eval mode for the CLIP weights (SAM's recipe).
        margin, background: region crops (see `region_crops`).
        chunk: crops per CLIP forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        freeze: bool = True,
        margin: float = 0.25,
        background: float = 0.5,
        chunk: int = 64,
    ) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.freeze, self.margin, self.background, self.chunk = freeze, margin, background, chunk
        self.embed_dim = int(model.visual.output_dim)
        self.image_size = int(model.visual.image_size[0])
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        mean, std = (
            cfg.get("mean", IMAGENET_MEAN),
            cfg.get("std", IMAGENET_STD),
        )  # CLIP's input norm
        self.register_buffer("clip_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    @classmethod
    def load(
        cls, clip: str, pretrained: str | None, cache_dir: str | None = None, **kwargs
    ) -> ClipPromptEncoder:
        """`load_open_clip(clip, pretrained, cache_dir)`, wrapped; kwargs as in the constructor."""
        model, tokenizer, _ = load_open_clip(clip, pretrained, cache_dir)
        return cls(model, tokenizer, **kwargs)

    def train(self, mode: bool = True) -> ClipPromptEncoder:
        super().train(mode)
        if self.freeze:
            self.model.eval()  # a frozen CLIP keeps eval behaviour (dropout off)
        return self

    @property
    def device(self) -> torch.device:
        return self.clip_mean.device

    def encode_text(self, phrases: list[str]) -> torch.Tensor:
        """Phrases -> [N, E] unit vectors ("a dog", "a photo of a chair")."""
        tokens = self.tokenizer(list(phrases)).to(self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """[K, 3, o, o] RGB in [0, 1] at the CLIP input size -> [K, E] unit vectors."""
        out = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            for part in crops.split(self.chunk):
                x = (part.to(self.device) - self.clip_mean) / self.clip_std
                out.append(F.normalize(self.model.encode_image(x).float(), dim=-1))
        return torch.cat(out) if out else crops.new_zeros(0, self.embed_dim)

    def encode_regions(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        boxes: torch.Tensor,
        image_index: torch.Tensor,
    ) -> torch.Tensor:
        """CLIP image embeddings of mask regions: [K, E] unit vectors.

        Args:
            images: [B, 3, S, S] ImageNet-normalised model inputs. masks: [K, S, S] bool.
            boxes: [K, 4] xyxy pixels. image_index: [K] image of each mask.
        """
        out = []
        for sl in torch.arange(masks.shape[0]).split(self.chunk):
            crops = region_crops(
                images,
                masks[sl],
                boxes[sl],
                image_index[sl],
                self.image_size,
                self.margin,
                self.background,
            )
            out.append(self.encode_crops(crops))
        return torch.cat(out) if out else images.new_zeros(0, self.embed_dim)
