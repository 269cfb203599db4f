"""Policies for sharded training (used by conf/trainer/fsdp.yaml)."""

from __future__ import annotations

from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from sam_train.models.vit import Block


def transformer_block_policy() -> ModuleWrapPolicy:
    """Wrap every ViT block (encoder and decoder) as its own FSDP unit."""
    classes = {Block}
    try:  # the SAM mask decoder's two-way blocks, when the SAM stage is installed
        from sam_train.models.sam.transformer import TwoWayAttentionBlock

        classes.add(TwoWayAttentionBlock)
    except ImportError:
        pass
    return ModuleWrapPolicy(classes)
