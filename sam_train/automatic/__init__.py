"""Automatic mask generation ("segment everything") with segment-anything's settings."""

from sam_train.automatic.generator import MaskGenerator

__all__ = ["MaskGenerator"]
