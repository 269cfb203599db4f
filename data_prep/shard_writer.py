"""Parallel, resumable writing of webdataset tar shards plus `manifest.json`.

Why it is built this way:
- Samples are assigned to shards by a plan made up front from the sorted inputs, so every run
  (and every rerun after a kill) puts the same samples in the same shard.
- A shard is written as `NAME.tmp-PID`, its stats go to `.parts/NAME.json`, then the tar is
  `os.replace`d into place: a shard under its final name is always complete, and a rerun skips
  shards whose stats carry the same plan digest.
- Tar members carry fixed metadata (mtime 0, uid/gid 0, no owner names), so two runs write
  byte-identical shards.
- A shard's plan digest covers the content options, and for each of its samples the key, the
  payload and the size and mtime of every file it is read from: a rerun after an input changed
  (a mask fixed, an image removed) rewrites exactly the shards whose inputs changed.
- A folder converted from another source (or by another converter) is refused unless
  `overwrite` is set, so one dataset never silently replaces or mixes into another.
- The manifest is written last, atomically; readers take the epoch length from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from data_prep.common import PrepError, SkipSample

MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"  # every input left out, one {"input", "reason", "detail"} per line
FORMAT = "sam_train.shards/v1"
PARTS = ".parts"

# encode(payload) -> (files, per-annotation skip counts); raises SkipSample. files is one
# sample's {ext: bytes}, or a list of (key suffix, {ext: bytes}) when one input makes several
# samples (tiles of a large image)
Encoder = Callable[[Any], tuple[dict[str, bytes] | list[tuple[str, dict[str, bytes]]], Counter]]


@dataclass
class Item:
    """One input sample: its key in the shards, an estimate of its bytes, what `encode` needs,
    how many samples it is planned to make (tiles of a large image; 1 otherwise), and the
    files it is read from (their size and mtime identify the input in the plan digest)."""

    key: str
    size: int
    payload: Any
    count: int = 1
    sources: tuple[str, ...] = ()


@dataclass
class ShardOptions:
    """How samples are grouped and written.

    maxcount: samples per shard at most (with tiles: as planned from the image sizes; an
        image's tiles stay in one shard, and tiles without masks that are left out make
        shards smaller).
    maxsize: bytes per shard at most (approximate: estimated from the input file sizes, so the
        plan is known before any image is decoded; resized shards come out smaller).
    workers: worker processes (one shard at a time each); 1 runs in this process.
    prefix: shard file names are `{prefix}-{index:06d}.tar`.
    progress: show a tqdm bar (images/s).
    overwrite: replace the shards of a folder converted from another source (without it,
        such a folder is refused).
    val_fraction: hold out this fraction of the inputs (whole images, with all their tiles)
        as `OUT/val`, the rest as `OUT/train`; which ones depends only on their keys.
    val_keys: hold out exactly these sample keys instead (or as well).
    """

    maxcount: int = 1000
    maxsize: int | None = None
    workers: int = 1
    prefix: str = "shard"
    progress: bool = True
    overwrite: bool = False
    val_fraction: float = 0.0
    val_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, value in (("maxcount", self.maxcount), ("workers", self.workers)):
            if value < 1:
                raise PrepError(f"--{name} {value}: give at least 1")
        if self.maxsize is not None and self.maxsize < 1:
            raise PrepError(f"--maxsize {self.maxsize}: give a size, e.g. 1G")
        if not 0.0 <= self.val_fraction < 1.0:
            raise PrepError(
                f"--val-fraction {self.val_fraction:g}: give a fraction in [0, 1), e.g. 0.1"
            )


@dataclass
class _Task:
    name: str
    digest: str
    items: list[Item]
    out: str
    encode: Encoder = field(repr=False)


def plan_groups(
    sizes: Sequence[int],
    maxcount: int,
    maxsize: int | None,
    counts: Sequence[int] | None = None,
) -> list[range]:
    """Consecutive index ranges: a new shard starts when either limit would be exceeded.
    counts: samples each input makes (default 1 each); `maxcount` limits their sum."""
    if maxcount < 1:
        raise ValueError(f"maxcount must be at least 1, got {maxcount}")
    counts = counts or [1] * len(sizes)
    groups, start, total, n = [], 0, 0, 0
    for i, (size, count) in enumerate(zip(sizes, counts)):
        full = i > start and (
            n + count > maxcount or (maxsize is not None and total + size > maxsize)
        )
        if full:
            groups.append(range(start, i))
            start, total, n = i, 0, 0
        total += size
        n += count
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


def write_tar(path: Path, samples: Sequence[tuple[str, dict[str, bytes]]]) -> int:
    """Write samples as a tar with fixed member metadata; returns its size in bytes."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, files in samples:
            for ext in sorted(files):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(files[ext]), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(files[ext]))
    return path.stat().st_size


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _write_shard(task: _Task) -> dict:
    """Encode one shard's samples and publish the tar; returns the shard's stats."""
    out = Path(task.out)
    samples, skipped, named = [], Counter(), []
    for item in task.items:
        try:
            files, ann_skips = task.encode(item.payload)
        except SkipSample as skip:
            skipped[skip.reason] += 1
            skipped.update(skip.also)
            name = item.sources[0] if item.sources else item.key
            named.append([name, skip.reason, skip.detail])
            continue
        skipped.update(ann_skips)
        if isinstance(files, list):
            samples += [(item.key + suffix, f) for suffix, f in files]
        else:
            samples.append((item.key, files))
    stats = {
        "name": task.name,
        "digest": task.digest,
        "count": len(samples),
        "bytes": 0,
        "inputs": len(task.items),
        "skipped": dict(skipped),
        "skipped_inputs": named,
    }
    tmp = out / f"{task.name}.tmp-{os.getpid()}"
    if samples:
        stats["bytes"] = write_tar(tmp, samples)
    _atomic_write_json(out / PARTS / f"{task.name}.json", stats)
    if samples:
        os.replace(tmp, out / task.name)
    return stats


def _done_stats(out: Path, task: _Task) -> dict | None:
    """Stats of a shard finished by an earlier run with the same plan, else None."""
    try:
        stats = json.loads((out / PARTS / f"{task.name}.json").read_text())
    except (OSError, ValueError):
        return None
    if stats.get("digest") != task.digest:
        return None
    return stats if stats["count"] == 0 or (out / task.name).is_file() else None


def _remove_stale_temps(out: Path) -> None:
    """Delete temporaries left by killed runs (their process no longer exists)."""
    for tmp in list(out.glob("*.tmp-*")) + list((out / PARTS).glob("*.tmp-*")):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _remove_unplanned(out: Path, prefix: str, names: set[str]) -> None:
    """Shards of an earlier plan with more shards than this one would linger and be read."""
    for path in out.glob(f"{prefix}-*.tar"):
        if path.name not in names:
            path.unlink()
            (out / PARTS / f"{path.name}.json").unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _identity(item: Item) -> list:
    """What one sample is made from: key, payload, and each source file's size and mtime."""
    files = []
    for path in item.sources:
        try:
            st = os.stat(path)
            files.append([path, st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([path, None, None])
    return [item.key, item.payload, files]


def _digest(content_args: dict, items: list[Item]) -> str:
    blob = json.dumps(
        [content_args, [_identity(it) for it in items]], sort_keys=True, default=str
    ).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def _claim_folder(out: Path, source: str, kind: str | None, overwrite: bool) -> None:
    """Refuse (or with `overwrite`, clear) a folder holding shards of another source."""
    try:
        old = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return
    old_kind = (old.get("args") or {}).get("kind")
    if old.get("source") == source and old_kind == kind:
        return
    if not overwrite:
        raise PrepError(
            f"{str(out)!r} holds {old_kind or 'other'} shards converted from "
            f"{old.get('source')!r}; pass --overwrite to replace them, or choose another folder"
        )
    for shard in old.get("shards", []):
        (out / Path(shard.get("name", "")).name).unlink(missing_ok=True)
    for part in (out / PARTS).glob("*.json"):
        part.unlink()
    (out / SKIPPED).unlink(missing_ok=True)
    (out / MANIFEST).unlink()


def _run_tasks(tasks: list[_Task], workers: int) -> Iterator[dict]:
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_write_shard, tasks)
        return
    # spawn: safe when called from a process that already runs torch threads; a worker that
    # dies (OOM kill) raises BrokenProcessPool here instead of hanging like multiprocessing.Pool
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx) as pool:
        futures = [pool.submit(_write_shard, t) for t in tasks]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _key_rank(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()


def split_items(
    items: Sequence[Item], val_fraction: float, val_keys: Sequence[str] = ()
) -> tuple[list[Item], list[Item]]:
    """(train, validation) items: the `val_keys`, and the round(fraction x n) items whose
    keys hash lowest. A function of the keys alone: a rerun, or another machine, splits the
    same way, and adding images moves few others across."""
    if not 0.0 <= val_fraction < 1.0:
        raise PrepError(f"--val-fraction {val_fraction:g}: give a fraction in [0, 1), e.g. 0.1")
    keys = {it.key for it in items}
    unknown = [k for k in val_keys if k not in keys]
    if unknown:
        raise PrepError(
            f"--val-images: {len(unknown)} names match no input ({', '.join(unknown[:3])}"
            f"{' ...' if len(unknown) > 3 else ''}); give input paths relative to the input "
            f"folder, e.g. {sorted(keys)[0] if keys else 'img_001.jpg'}"
        )
    held = set(val_keys)
    n_val = round(val_fraction * len(items))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    rest = sorted((it for it in items if it.key not in held), key=lambda it: _key_rank(it.key))
    held |= {it.key for it in rest[: max(n_val - len(held), 0)]}
    train = [it for it in items if it.key not in held]
    val = [it for it in items if it.key in held]
    if not train or not val:
        raise PrepError(
            f"a validation split of {len(val)} of {len(items)} inputs leaves "
            f"{'no training' if not train else 'no validation'} data; give a smaller "
            "--val-fraction / fewer --val-images, or more inputs"
        )
    return train, val


def _write_split(
    items: Sequence[Item],
    encode: Encoder,
    out: Path,
    options: ShardOptions,
    source: str,
    content_args: dict,
    pre_skipped: Sequence[tuple[str, str, str]] | None,
) -> dict:
    """Write `OUT/train` and `OUT/val`; inputs skipped while listing count in train."""
    if (out / MANIFEST).is_file():  # unsplit shards of an earlier run would be read too
        if not options.overwrite:
            raise PrepError(
                f"{str(out)!r} holds unsplit shards; pass --overwrite to replace them with "
                "OUT/train and OUT/val, or choose another folder"
            )
        _claim_folder(out, "", None, overwrite=True)
    train, val = split_items(items, options.val_fraction, options.val_keys)
    plain = replace(options, val_fraction=0.0, val_keys=())
    split = {"val_fraction": options.val_fraction, "val_images": len(options.val_keys)}
    manifests = {}
    for name, part, pre in (("train", train, pre_skipped), ("val", val, None)):
        args = {**content_args, "split": name, **split}
        manifests[name] = write_shards(part, encode, out / name, plain, source, args, pre)
    return {"splits": manifests}


def write_shards(
    items: Sequence[Item],
    encode: Encoder,
    out: str | Path,
    options: ShardOptions,
    source: str,
    content_args: dict,
    pre_skipped: Sequence[tuple[str, str, str]] | None = None,
) -> dict:
    """Write `items` as shards under `out` and return the manifest.

    content_args: every option that changes shard content (recorded in the manifest and in each
        shard's plan digest, so changing one rewrites the shards instead of mixing them).
    pre_skipped: (input, reason, detail) of inputs already rejected while listing them (an
        image missing). Every skipped input is named in `out/skipped.jsonl`.
    With `options.val_fraction` or `options.val_keys`: writes `out/train` and `out/val` and
    returns `{"splits": {"train": manifest, "val": manifest}}`.
    """
    out = Path(out)
    if options.val_fraction or options.val_keys:
        return _write_split(items, encode, out, options, source, content_args, pre_skipped)
    _claim_folder(out, source, content_args.get("kind"), options.overwrite)
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    groups = plan_groups(
        [it.size for it in items], options.maxcount, options.maxsize, [it.count for it in items]
    )
    tasks = []
    for i, group in enumerate(groups):
        group_items = [items[j] for j in group]
        digest = _digest(content_args, group_items)
        tasks.append(_Task(f"{options.prefix}-{i:06d}.tar", digest, group_items, str(out), encode))
    _remove_unplanned(out, options.prefix, {t.name for t in tasks})
    stats = {t.name: s for t in tasks if (s := _done_stats(out, t)) is not None}
    pending = [t for t in tasks if t.name not in stats]
    t0 = time.perf_counter()
    bar = _progress(len(items), sum(s["inputs"] for s in stats.values()), options.progress)
    for s in _run_tasks(pending, options.workers):
        stats[s["name"]] = s
        bar.update(s["inputs"])
    bar.close()
    ordered = [stats[t.name] for t in tasks]
    named = [list(p) for p in pre_skipped or ()]
    named += [entry for st in ordered for entry in st.get("skipped_inputs", [])]
    manifest = _manifest(ordered, source, content_args, Counter(p[1] for p in pre_skipped or ()))
    _write_skipped(out / SKIPPED, named)
    _atomic_write_json(out / MANIFEST, manifest)
    # for the report only (not in the manifest file)
    manifest["seconds"] = round(time.perf_counter() - t0, 3)
    manifest["skipped_inputs"], manifest["skipped_file"] = named, str(out / SKIPPED)
    return manifest


def _write_skipped(path: Path, named: list[list[str]]) -> None:
    """`skipped.jsonl`: every input left out, with its reason; none left when none was."""
    if not named:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    lines = (json.dumps({"input": i, "reason": r, "detail": d}) for i, r, d in named)
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", disable=not enabled, smoothing=0.1)


def _manifest(stats: list[dict], source: str, content_args: dict, pre: Counter | None) -> dict:
    skipped = Counter(pre or {})
    for s in stats:
        skipped.update(s["skipped"])
    # digest: of the shard's options and inputs (keys, payloads, source sizes and mtimes)
    shards = [
        {"name": s["name"], "count": s["count"], "bytes": s["bytes"], "digest": s["digest"]}
        for s in stats
        if s["count"]
    ]
    return {
        "format": FORMAT,
        "source": source,
        "args": content_args,
        "shards": shards,
        "total": sum(s["count"] for s in shards),
        "skipped": dict(sorted(skipped.items())),
    }


def options_dict(options: ShardOptions) -> dict:
    """The grouping options, for the manifest (workers and progress do not change content)."""
    d = asdict(options)
    return {k: d[k] for k in ("maxcount", "maxsize", "prefix")}


_STAGE1 = "stage 2 needs masks; `sam-prep images` on the same folder keeps them for stage 1"
# what a skip means and what to do about it, printed beside the count
REASON_HINTS = {
    "no_valid_annotations": _STAGE1,
    "image_without_masks": "stage 2 needs masks; --keep-empty writes them for stage 1",
    "image_not_8bit": "pass --normalize percentile:1,99.8 (or minmax, range:LO,HI)",
    "class_not_in_table": "objects of a pixel value missing from --classes (ignored)",
    "tile_fragment_too_small": "pieces cut by a tile border, below --tile-min-area",
    "tile_without_masks": "tiles with no object left out (not an error)",
    "kept_without_masks": "written with no masks (--keep-empty): stage 1 reads them, "
    "stage 2 skips them as no_masks",
    "shape_point_ignored": "labelme points have no area",
    "shape_line_ignored": "labelme lines have no area",
}


SHOWN_SKIPS = 5  # skipped inputs named in the report; skipped.jsonl names them all


def report(manifest: dict) -> str:
    """A short human summary of a finished conversion (of each split, when split)."""
    if "splits" in manifest:
        return "\n".join(f"{name}: {report(m)}" for name, m in manifest["splits"].items())
    lines = [f"wrote {manifest['total']} samples in {len(manifest['shards'])} shards"]
    if manifest.get("seconds"):
        lines[0] += f" ({manifest['seconds']:.1f} s)"
    for reason, n in manifest["skipped"].items():
        hint = REASON_HINTS.get(reason)
        lines.append(f"  skipped {n:>7}  {reason}" + (f"  ({hint})" if hint else ""))
    named = manifest.get("skipped_inputs") or []
    for name, reason, detail in named[:SHOWN_SKIPS]:
        lines.append(f"    {name}: {reason}" + (f" ({detail})" if detail else ""))
    if named:
        more = f"{len(named) - SHOWN_SKIPS} more; " if len(named) > SHOWN_SKIPS else ""
        lines.append(f"    ({more}every skipped input: {manifest['skipped_file']})")
    return "\n".join(lines)
