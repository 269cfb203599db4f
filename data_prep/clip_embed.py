"""Stage-2 shards + precomputed CLIP region embeddings (`sam-prep clip-embed SRC OUT`).

Every sample of SRC is copied to OUT with one more member, `clip.npy`: float16 [N, E], row i
the CLIP image embedding (L2-normalised) of annotation i's region, rendered exactly as training
sees it (image resized to `image_size` on its longest side, SAM's padded frame, the same crop
code as `ClipPromptEncoder.encode_regions`). Rows of masks below `min_area` pixels (at that
size) are zeros: training then never prompts those masks with text. Training reads the rows of
the masks it keeps (`SamBatch.region_embeds`), so the CLIP image tower does not run per step.

Sharded, parallel and resumable through `data_prep.add_member` (one CLIP copy per worker).
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from data_prep.add_member import copy_with_member, npy_bytes, worker_threads
from data_prep.shard_writer import ShardOptions


@functools.lru_cache(maxsize=1)
def _encoder(
    clip: str,
    pretrained: str | None,
    cache_dir: str | None,
    margin: float,
    background: float,
    threads: int,
):
    from sam_train.models.sam.text import ClipPromptEncoder

    if threads > 0:
        torch.set_num_threads(threads)
    return ClipPromptEncoder.load(clip, pretrained, cache_dir, margin=margin, background=background)


def region_table(encoder, image: torch.Tensor, masks: torch.Tensor, min_area: int) -> np.ndarray:
    """[N, E] float16 CLIP region embeddings; zero rows for masks below `min_area` pixels."""
    from sam_train.data.sam_samples import masks_to_boxes

    table = np.zeros((len(masks), encoder.embed_dim), dtype=np.float16)
    ok = (masks.flatten(1).sum(1) >= min_area).numpy()
    if ok.any():
        boxes = torch.from_numpy(masks_to_boxes(masks[ok].numpy()))
        with torch.no_grad():
            emb = encoder.encode_regions(
                image[None], masks[ok], boxes, torch.zeros(int(ok.sum()), dtype=torch.long)
            )
        table[ok] = emb.numpy().astype(np.float16)
    return table


def clip_member(
    image: torch.Tensor,
    masks: torch.Tensor,
    anns: list[dict],
    clip: str,
    pretrained: str | None,
    cache_dir: str | None,
    margin: float,
    background: float,
    min_area: int,
    threads: int = 0,
) -> tuple[bytes, Counter]:
    """`clip.npy` of one sample: its region table, and how many rows are below `min_area`."""
    encoder = _encoder(clip, pretrained, cache_dir, margin, background, threads)
    table = region_table(encoder, image, masks, min_area)
    small = int((np.abs(table).sum(1) == 0).sum())
    return npy_bytes(table), Counter({"region_below_min_area": small} if small else {})


def convert_clip_embed(
    src: str | Path,
    out: str | Path,
    clip: str,
    pretrained: str | None,
    image_size: int = 1024,
    margin: float = 0.25,
    background: float = 0.5,
    min_area: int = 10000,
    cache_dir: str | None = None,
    options: ShardOptions | None = None,
) -> dict:
    """Copy the stage-2 shards of `src` to `out` with `clip.npy` per sample; the manifest.

    image_size, margin, background, min_area: as the training config's `model.image_size` and
    `prompt.text.{crop_margin, crop_background, min_region_area}` (the manifest records them).
    """
    from sam_train.models.sam.text import clip_model_name

    options = options or ShardOptions()
    clip_model_name(clip)  # an unknown model name fails here, before any worker starts
    if Path(pretrained or "").is_file():
        pretrained = str(Path(pretrained).resolve())
    make = functools.partial(
        clip_member,
        clip=clip,
        pretrained=pretrained,
        cache_dir=cache_dir,
        margin=margin,
        background=background,
        min_area=min_area,
        threads=worker_threads(options),
    )
    args = {
        "kind": "clip_embed",
        "clip": clip,
        "pretrained": pretrained,
        "margin": margin,
        "background": background,
        "min_area": min_area,
    }
    return copy_with_member(src, out, "clip.npy", image_size, make, options, args)
