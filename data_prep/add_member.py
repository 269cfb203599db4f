"""Copy stage-2 shards with one more member per sample, computed from the sample as training
prepares it: the loop that `sam-prep clip-embed` (`clip.npy`) and `sam-prep teacher-embed`
(`teacher.npy`) share.

The copy is sharded, parallel and resumable through `data_prep.shard_writer`: each input sample
is one item, in shard order; a worker reads its input shard once (cached) and adds the member.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from data_prep.common import PrepError, SkipSample
from data_prep.shard_writer import Item, ShardOptions, options_dict, write_shards

DECODE_CHUNK = 32  # masks decoded at full resolution at a time

# (image [3, S, S], masks [N, S, S], annotations) -> (member bytes, counts of what was left out)
MemberFn = Callable[[torch.Tensor, torch.Tensor, list[dict]], tuple[bytes, Counter]]


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


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` as the bytes of a .npy file (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def worker_threads(options: ShardOptions) -> int:
    """Torch threads per conversion worker: the process's share when several run, 0 (leave
    the default) for one."""
    if options.workers <= 1:
        return 0
    return max(1, torch.get_num_threads() // options.workers)


def add_member_sample(
    payload: tuple[str, str], member: str, image_size: int, make: MemberFn
) -> tuple[dict[str, bytes], Counter]:
    """(shard url, key) -> the sample's members plus `member`, made by `make`."""
    url, key = payload
    files = dict(read_shard(url)[key])
    try:
        image, masks, anns = model_input(files, image_size)
    except (KeyError, ValueError, OSError) as err:
        raise SkipSample("sample_unreadable", f"{url}:{key}: {err}") from err
    files[member], counts = make(image, masks, anns)
    return files, counts


def copy_with_member(
    src: str | Path,
    out: str | Path,
    member: str,
    image_size: int,
    make: MemberFn,
    options: ShardOptions,
    args: dict,
) -> dict:
    """Copy every sample of the stage-2 shards `src` to `out` with `member` added; `make` must
    be picklable (a module-level function or a `functools.partial` of one) for workers. `args`
    (the conversion's settings) go into the manifest. Returns the manifest."""
    from sam_train.data.shards import resolve_shards

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
    encode = functools.partial(add_member_sample, member=member, image_size=image_size, make=make)
    manifest_args = {**args, "image_size": image_size, **options_dict(options)}
    return write_shards(items, encode, out, options, str(Path(src).resolve()), manifest_args)
