"""Stage-2 shards + precomputed CLIP region embeddings (`sam-prep clip-embed SRC OUT`).

Every sample of SRC is copied to OUT with one more member, `clip.npy`: float16 [N, E], row i
the CLIP image embedding (L2-normalised) of annotation i's region, rendered exactly as training
sees it (image resized to `image_size` on its longest side, SAM's padded frame, the same crop
code as `ClipPromptEncoder.encode_regions`). Rows of masks below `min_area` pixels (at that
size) are zeros: training then never prompts those masks with text. Training reads the rows of
the masks it keeps (`SamBatch.region_embeds`), so the CLIP image tower does not run per step.

Sharded, parallel and resumable through `data_prep.shard_writer` (one CLIP copy per worker).
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from data_prep.common import PrepError, SkipSample
from data_prep.shard_writer import Item, ShardOptions, options_dict, write_shards

DECODE_CHUNK = 32  # masks decoded at full resolution at a time


def read_shard(url: str) -> dict[str, dict[str, bytes]]:
    """Members of a tar shard grouped by sample key: {key: {ext: bytes}} (two shards cached:
    a planned output shard may span two input shards; a shard rewritten since is read again)."""
    st = Path(url).stat()
    return _read_shard(url, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _read_shard(url: str, size: int, mtime_ns: int) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(url) as tar:
        for member in tar:
            if member.isfile():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


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


def model_input(sample: dict, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """The sample as training prepares it, without filtering, shuffling or flipping: image
    [3, S, S] (normalised, padded), masks [N, S, S] bool of every annotation in order, and the
    annotations."""
    from sam_train.data.sam_samples import (
        compressed_rle,
        normalise_image,
        resize_decoded,
        resized_hw,
    )
    from sam_train.data.shards import decode_image

    img = decode_image(sample)
    anns = json.loads(sample["json"])["annotations"]
    W, H = img.size
    h, w = resized_hw(H, W, image_size)
    masks = torch.zeros(len(anns), image_size, image_size, dtype=torch.bool)
    for start in range(0, len(anns), DECODE_CHUNK):
        chunk = anns[start : start + DECODE_CHUNK]
        small = resize_decoded(
            mask_utils.decode([compressed_rle(a["segmentation"]) for a in chunk]), h, w
        )
        masks[start : start + len(chunk), :h, :w] = torch.from_numpy(small.view(bool))
    image = normalise_image(img.resize((w, h), Image.Resampling.BILINEAR), image_size)
    return image, masks, anns


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


def encode_clip_sample(
    payload: tuple[str, str],
    clip: str,
    pretrained: str | None,
    cache_dir: str | None,
    image_size: int,
    margin: float,
    background: float,
    min_area: int,
    threads: int = 0,
) -> tuple[dict[str, bytes], Counter]:
    """(shard url, key) -> the sample's members plus `clip.npy`."""
    url, key = payload
    files = dict(read_shard(url)[key])
    encoder = _encoder(clip, pretrained, cache_dir, margin, background, threads)
    try:
        image, masks, _ = model_input(files, image_size)
    except (KeyError, ValueError, OSError) as err:
        raise SkipSample("sample_unreadable", f"{url}:{key}: {err}") from err
    table = region_table(encoder, image, masks, min_area)
    buf = io.BytesIO()
    np.save(buf, table, allow_pickle=False)
    files["clip.npy"] = buf.getvalue()
    small = int((np.abs(table).sum(1) == 0).sum())
    return files, Counter({"region_below_min_area": small} if small else {})


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
    from sam_train.data.shards import resolve_shards
    from sam_train.models.sam.text import clip_model_name

    options = options or ShardOptions()
    clip_model_name(clip)  # an unknown model name fails here, before any worker starts
    try:
        urls, _ = resolve_shards(str(src))
    except FileNotFoundError as err:
        raise PrepError(str(err)) from err
    items = []
    for url in urls:
        with tarfile.open(url) as tar:
            names = [m.name for m in tar if m.isfile()]
        keys = list(dict.fromkeys(n.split(".", 1)[0] for n in names))  # in shard order
        items += [Item(k, 1, (url, k), sources=(url,)) for k in keys]
    if Path(pretrained or "").is_file():
        pretrained = str(Path(pretrained).resolve())
    threads = max(1, (torch.get_num_threads() // max(options.workers, 1)))
    encode = functools.partial(
        encode_clip_sample,
        clip=clip,
        pretrained=pretrained,
        cache_dir=cache_dir,
        image_size=image_size,
        margin=margin,
        background=background,
        min_area=min_area,
        threads=threads if options.workers > 1 else 0,
    )
    args = {
        "kind": "clip_embed",
        "clip": clip,
        "pretrained": pretrained,
        "image_size": image_size,
        "margin": margin,
        "background": background,
        "min_area": min_area,
        **options_dict(options),
    }
    return write_shards(items, encode, out, options, str(Path(src).resolve()), args)
