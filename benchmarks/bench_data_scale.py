"""Data at scale: SA-1B-like conversion per core, and shard readers per worker from one local
source, a 3-source mixture of the same shards, and HTTP from 127.0.0.1 (same shards, one run).

    python benchmarks/bench_data_scale.py [--images 24] [--masks 100] [--reps 3] [--json out.json]

Inputs: `--images` SA-1B-like pairs (sa_N.jpg 2250 x 1500 crops of the sample photos, JPEG
q90, + sa_N.json with `--masks` ellipse masks as compressed RLE at full size, SA-1B's layout),
converted with `convert_sa1b --max-side 1024` in one process (images/s per core, bytes per
sample). Readers, each in this process (= one loader worker), 1 torch thread, contenders
alternating after a warm-up, median of `--reps`, in wall time and in CPU seconds of the
reading process (steadier on a loaded machine; the HTTP server runs in its own process): stage 2 = `SamSamplePrep` at 1024 px with at
most 64 masks, collated to SamBatch, batch 4; stage 1 = MAE RandomResizedCrop to 224, batch 32.
Before them, the cost of opening one shard and reading it through (local file, HTTP as the
readers open it, fsspec's HTTP stream). Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from common import load_average, machine, median, spread, write_report
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from data_prep.records import PixelOptions
from data_prep.sa1b import convert_sa1b
from data_prep.shard_writer import ShardOptions
from sam_train.data.sample_images import SAMPLE_PHOTOS, load_sample_photo

W, H = 2250, 1500  # SA-1B's typical original size (landscape)


def make_sa1b_like(root: Path, n: int, n_masks: int) -> Path:
    """`n` sa_N.jpg + sa_N.json pairs in SA-1B's layout."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    photos = [load_sample_photo(p) for p in SAMPLE_PHOTOS]
    for i in range(n):
        photos[i % len(photos)].convert("RGB").resize((W, H), Image.BICUBIC).save(
            root / f"sa_{i}.jpg", quality=90
        )
        anns = []
        for k in range(n_masks):
            canvas = Image.new("L", (W, H), 0)
            rx, ry = rng.uniform(15, 300, size=2)
            cx, cy = rng.uniform(rx, W - rx), rng.uniform(ry, H - ry)
            ImageDraw.Draw(canvas).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
            m = np.asfortranarray(np.asarray(canvas, dtype=np.uint8))
            rle = mask_utils.encode(m)
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            anns.append(
                {
                    "id": i * 1000 + k,
                    "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
                    "bbox": [x, y, w, h],
                    "area": int(mask_utils.area(rle)),
                    "predicted_iou": 0.9,
                    "stability_score": 0.95,
                    "point_coords": [[cx, cy]],
                    "crop_box": [0, 0, W, H],
                }
            )
        meta = {"image_id": i, "width": W, "height": H, "file_name": f"sa_{i}.jpg"}
        (root / f"sa_{i}.json").write_text(json.dumps({"image": meta, "annotations": anns}))
    return root


@contextmanager
def serve(root: Path, limit_s: int = 1800) -> Iterator[str]:
    """`python -m http.server` on 127.0.0.1 over `root`, in its own process (as a remote server
    would not share this process's interpreter lock); stopped when the block ends, or by
    `timeout` after `limit_s`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = ["timeout", str(limit_s), sys.executable, "-m", "http.server", str(port)]
    cmd += ["--bind", "127.0.0.1", "--directory", str(root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):  # until it answers
            try:
                urllib.request.urlopen(f"{base}/manifest.json", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def readers(shards: Path, base: str, stage: str, samples: int) -> dict:
    """name -> a call that reads `samples` decoded samples (one epoch of a fresh stream)."""
    from sam_train.data.mixture import MixtureStream, ResolvedSource
    from sam_train.data.sam_samples import SamSamplePrep, collate_sam
    from sam_train.data.shard_datamodules import MaeDecode, stack_images
    from sam_train.data.shards import ShardStream, resolve_shards
    from sam_train.data.transforms import MaeTrainTransform

    local, total = resolve_shards(shards)
    remote = [f"{base}/{Path(u).name}" for u in local]
    if stage == "sam":
        decode, collate, batch = SamSamplePrep(1024, 64, hflip=True), collate_sam, 4
    else:
        decode, collate, batch = MaeDecode(MaeTrainTransform(224)), stack_images, 32
    common = dict(resampled=True, samples_per_epoch=samples, shuffle_buffer=16, num_workers=0)
    thirds = [local[i::3] for i in range(3)]
    sources = [ResolvedSource(f"s{i}", tuple(u), 1.0, None) for i, u in enumerate(thirds)]
    streams = {
        "one local source": ShardStream(local, decode, collate, batch, total=total, **common),
        "3-source mixture": MixtureStream(
            sources, decode, collate, batch, samples, shuffle_buffer=16
        ),
        "http 127.0.0.1": ShardStream(remote, decode, collate, batch, total=total, **common),
    }
    return {name: partial(lambda s: sum(1 for _ in s), s) for name, s in streams.items()}


def shard_costs(shards: Path, base: str, reps: int) -> dict[str, dict]:
    """ms of wall and CPU to open one shard and read it to the end, 10 KB at a time as the
    tar reader does: from the local file, over HTTP as the readers open it
    (`remote.open_shard`), and through fsspec's HTTP stream read a megabyte at a time (how
    `http://` was read before run 6), each over all shards, alternating, `reps` x 4 times."""
    import fsspec

    from sam_train.data.remote import open_shard

    def fsspec_stream(url: str):
        return io.BufferedReader(fsspec.open(url, "rb", block_size=0).open(), 1 << 20)

    names = sorted(p.name for p in shards.glob("*.tar"))
    openers = {
        "local file": lambda n: open(shards / n, "rb"),
        "http (open_shard)": lambda n: open_shard(f"{base}/{n}"),
        "http (fsspec stream)": lambda n: fsspec_stream(f"{base}/{n}"),
    }

    def read_all(opener) -> None:
        for name in names:
            with opener(name) as f:
                while f.read(10240):
                    pass

    contenders = {k: partial(read_all, v) for k, v in openers.items()}
    times = interleaved_cpu(contenders, 4 * reps, 1)
    return {
        k: {
            "wall_ms": 1e3 * median([w for w, _ in ts]) / len(names),
            "cpu_ms": 1e3 * median([c for _, c in ts]) / len(names),
            "cpu_spread": spread([c for _, c in ts]),
        }
        for k, ts in times.items()
    }


def interleaved_cpu(contenders: dict, reps: int, warmup: int) -> dict[str, list[tuple]]:
    """(wall s, CPU s of this process) per call of each contender, alternating (order reversed
    every round). CPU seconds are what a dedicated core would spend: on a loaded machine they
    vary far less than wall time (an HTTP server in another process is not counted)."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    out: dict[str, list[tuple]] = {name: [] for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else reversed(names):
            w0, c0 = time.perf_counter(), time.process_time()
            contenders[name]()
            out[name].append((time.perf_counter() - w0, time.process_time() - c0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--masks", type=int, default=100)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", type=str, default=None)
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    out: dict = {"machine": machine(), "images": a.images, "masks": a.masks, "load": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = make_sa1b_like(root / "sa1b", a.images, a.masks)
        src_bytes = sum(f.stat().st_size for f in src.iterdir())
        t0, c0 = time.perf_counter(), time.process_time()
        manifest = convert_sa1b(
            src,
            root / "shards",
            ShardOptions(maxcount=4, workers=1, progress=False),
            PixelOptions(max_side=1024),
        )
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        shard_bytes = sum(s["bytes"] for s in manifest["shards"])
        out["convert"] = {
            "images_per_s_per_core": manifest["total"] / dt,
            "images_per_cpu_s": manifest["total"] / cpu,
            "source_bytes_per_image": src_bytes / a.images,
            "shard_bytes_per_sample": shard_bytes / manifest["total"],
        }
        with serve(root / "shards") as base:
            out["shard_costs"] = shard_costs(root / "shards", base, a.reps)
            rows = []
            for stage, samples in (("sam", 24), ("mae", 128)):
                out["load"].append(load_average())
                calls = readers(root / "shards", base, stage, samples)
                times = interleaved_cpu(calls, a.reps, 1)
                wall0 = median([w for w, _ in times["one local source"]])
                cpu0 = median([c for _, c in times["one local source"]])
                for name, ts in times.items():
                    wall, cpu = [w for w, _ in ts], [c for _, c in ts]
                    rows.append(
                        {
                            "stage": stage,
                            "reader": name,
                            "samples_per_s": samples / median(wall),
                            "vs_local": wall0 / median(wall),
                            "spread": spread(wall),
                            "samples_per_cpu_s": samples / median(cpu),
                            "cpu_vs_local": cpu0 / median(cpu),
                            "cpu_spread": spread(cpu),
                        }
                    )
    out["read"] = rows
    out["load"].append(load_average())
    c = out["convert"]
    print(
        f"convert sa1b --max-side 1024, 1 process: {c['images_per_s_per_core']:.2f} images/s "
        f"({c['images_per_cpu_s']:.2f} per CPU s); "
        f"{c['source_bytes_per_image'] / 1e6:.2f} MB in, {c['shard_bytes_per_sample'] / 1e6:.3f} "
        "MB per sample out"
    )
    for name, cost in out["shard_costs"].items():
        print(
            f"one shard, {name:20}: {cost['wall_ms']:6.2f} ms wall, {cost['cpu_ms']:6.2f} ms CPU "
            f"(spread {cost['cpu_spread']:.0%})"
        )
    head = f"{'stage':6} {'reader':18} {'samples/s':>10} {'vs local':>9} {'spread':>7}"
    print(head + f" {'per CPU s':>10} {'vs local':>9} {'spread':>7}")
    for r in rows:
        print(
            f"{r['stage']:6} {r['reader']:18} {r['samples_per_s']:>10.2f} "
            f"{r['vs_local']:>8.0%} {r['spread']:>7.0%} {r['samples_per_cpu_s']:>10.2f} "
            f"{r['cpu_vs_local']:>8.0%} {r['cpu_spread']:>7.0%}"
        )
    write_report(out, a.json)


if __name__ == "__main__":
    main()
