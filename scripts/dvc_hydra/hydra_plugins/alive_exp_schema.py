"""Registers alive-exp's config schema when DVC composes conf/ (`dvc exp run -S ...`).

conf/config.yaml's defaults list starts with `config_schema`, which lives in Hydra's ConfigStore and is put
there by `register_configs()` (train.py calls it). DVC composes in its own process; it imports every module
of the `hydra_plugins` namespace under `.dvc/config`'s `hydra.plugins_path` (this folder) before composing,
so importing this module is what makes the schema available there.
"""

from alive_exp.config import register_configs

register_configs()
