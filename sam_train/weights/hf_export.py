"""`sam-export --format hf`: a SAM or MAE checkpoint as a transformers folder (SamModel /
ViTMAEForPreTraining: config.json, model.safetensors, the processor's files)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from sam_train.files import atomic_dir
from sam_train.weights.export_folder import check_output_folder
from sam_train.weights.hf import import_transformers, mae_hf_config, sam_hf_config
from sam_train.weights.hf_keymap import mae_to_hf, sam_to_hf
from sam_train.weights.keymaps import mae_from_official
from sam_train.weights.loaded import LoadedWeights, WeightsError
from sam_train.weights.safetensors_io import cast_floats
from sam_train.weights.sam_loading import load_sam


def export_hf_weights(weights: LoadedWeights, out: Path, dtype: str) -> Path:
    """EXPORTERS entry: a SAM or MAE checkpoint -> a transformers folder (fp32 or cast)."""
    if weights.layout == "tiny_vit_sam":
        raise WeightsError(
            f"--format hf: {weights.path} is a TinyViT (MobileSAM-family) SAM and transformers' "
            "SamModel has no TinyViT encoder; use --format sam, onnx or safetensors"
        )
    transformers = import_transformers()
    check_output_folder(out, "config.json", "hf")
    if weights.layout in ("sam_train_sam", "sam_official"):
        sam = load_sam(weights.path)
        config = transformers.SamConfig(**sam_hf_config(sam.architecture, sam.state_dict()))
        config.architectures = ["SamModel"]
        tensors = sam_to_hf(sam.state_dict())
        processor = transformers.SamProcessor(
            image_processor=transformers.SamImageProcessor(
                size={"longest_edge": sam.image_encoder.img_size},
                pad_size={
                    "height": sam.image_encoder.img_size,
                    "width": sam.image_encoder.img_size,
                },
            )
        )
    elif weights.layout in ("sam_train_mae", "mae_official"):
        state = weights.state_dict
        if weights.layout == "mae_official":
            state = mae_from_official(state)
        config = transformers.ViTMAEConfig(**mae_hf_config(state, weights.metadata))
        config.architectures = ["ViTMAEForPreTraining"]
        tensors = mae_to_hf(state)
        processor = None
    else:
        raise WeightsError(
            f"--format hf needs a SAM (stage 2) or MAE (stage 1) checkpoint; {weights.path} "
            f"holds a bare {weights.layout} encoder"
        )
    if dtype != "fp32":
        config.dtype = dtype.replace("fp", "float").replace("bf16", "bfloat16")
    tensors = {k: v.contiguous() for k, v in cast_floats(tensors, dtype).items()}
    with atomic_dir(out) as tmp:
        config.save_pretrained(tmp)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if processor is not None:
            processor.save_pretrained(tmp)
        (tmp / "sam_train.json").write_text(
            json.dumps({"source": str(weights.path), "layout": weights.layout}, indent=2)
        )
    return out


# ---------------------------------------------------------------------------------------------
# import
