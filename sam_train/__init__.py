"""sam_train: MAE pretraining and Segment-Anything training of Vision Transformers."""

__version__ = "0.1.0"
