"""Hydra configs of sam_train (packaged as sam_train.conf). Importing this package stores the
`code_defaults/<target>` nodes the config files build on (see sam_train/config_defaults.py)."""

from pathlib import Path

from sam_train.config_defaults import register_code_defaults

register_code_defaults(Path(__file__).parent)
