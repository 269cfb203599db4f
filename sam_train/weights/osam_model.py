"""Run an exported model through osam (the engine of labelme's AI polygons).

osam has no file that names a local model: a model is a Python class listed in
`osam.apis.registered_model_types`, whose ONNX files ("blobs") osam looks up by their sha256 in
~/.cache/osam/models/blobs/ (downloading them from the class's URL only when they are not
there). `register_osam_model` does those two things for `sam-export --format onnx`'s osam/
folder: it links the two graphs into osam's cache under their hashes and registers a class
that runs osam's own SAM code on them.

    from sam_train.weights.osam_model import register_osam_model
    register_osam_model("model/")                  # -> "sam-train:model"
    osam.apis.generate(osam.types.GenerateRequest(model="sam-train:model", image=rgb,
                       prompt=osam.types.Prompt(points=..., point_labels=...)))

labelme offers a fixed list of model names in its menu; registering under one of them
(`name="sam:100m"`, labelme's "Sam (speed)") before labelme starts makes that entry run ours.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _into_cache(blob, source: Path) -> None:
    """Put `source` where osam looks for `blob` (a link; a copy where links are refused)."""
    target = Path(blob.path)
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copyfile(source, target)


def register_osam_model(folder: str | Path, name: str | None = None) -> type:
    """Register the osam graphs of an export folder (the folder, or its osam/ subfolder) with
    osam under `name` (default "sam-train:<folder name>"); a name osam already knows is
    shadowed. Returns the registered class."""
    import osam
    from osam._models import Sam100m  # osam's SAM: reads S from the encoder, resizes, pads

    folder = Path(folder)
    graphs = folder / "osam" if (folder / "osam").is_dir() else folder
    missing = [f for f in ("encoder.onnx", "decoder.onnx") if not (graphs / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{graphs} has no {' / '.join(missing)}: give the folder `sam-export --format onnx`"
            " wrote"
        )
    blobs = {}
    for key in ("encoder", "decoder"):
        source = graphs / f"{key}.onnx"
        blob = osam.types.Blob(url=source.resolve().as_uri(), hash=f"sha256:{_sha256(source)}")
        _into_cache(blob, source)
        blobs[key] = blob
    export_name = (graphs.parent if graphs.name == "osam" else graphs).resolve().name
    name = name or f"sam-train:{export_name}"
    model_type = type("SamTrainOsamModel", (Sam100m,), {"name": name, "_blobs": blobs})
    registered = osam.apis.registered_model_types
    registered[:] = [model_type] + [m for m in registered if m.name != name]
    return model_type
