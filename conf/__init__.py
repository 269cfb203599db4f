"""Hydra configs of sam_train (packaged as sam_train.conf); `code_defaults/` holds the nodes
generated from signatures (sam_train/config_defaults.py)."""
