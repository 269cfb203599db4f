"""The pixel normalisation every model here takes its images in (ImageNet statistics, as MAE,
SAM and timm): `(rgb / 255 - MEAN) / STD` per channel."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
