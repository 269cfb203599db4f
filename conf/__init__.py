"""Hydra configs of sam_train (packaged as sam_train.conf)."""
