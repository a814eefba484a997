"""A run described by an OLMo config.yaml: configs/1b.py with every key the YAML sets (model, optimizer, scheduler,
batch sizes, seed, data, max_duration, precision, loss normalisation) taken from it.

    python -m olmo_jax.train --config=configs/olmo_yaml.py:runs/olmo/step1000-unsharded \\
        --config.load_path=runs/olmo/step1000-unsharded --config.save_folder=runs/continued

The argument after the colon is an OLMo config.yaml (a path or an http(s) URL, fetched once into the cache) or a
checkpoint directory holding one. OLMo options olmo_jax
cannot reproduce are refused, each named (olmo_jax/train/olmo_config.py `map_olmo_config`); `--config.*` overrides
still apply on top. Without an argument this is configs/1b.py. docs/olmo-exchange.md says what carries over.
"""

import importlib.util
import sys
from pathlib import Path

import ml_collections


def _base() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("olmo_jax_config_1b", Path(__file__).with_name("1b.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(yaml_path: str | None = None) -> ml_collections.ConfigDict:
    c = _base()
    if not yaml_path:
        return c
    from olmo_jax.data.config import is_url
    from olmo_jax.train.olmo_config import map_olmo_config
    from olmo_jax.train.olmo_files import CONFIG_FILE, read_config_yaml

    if is_url(yaml_path):  # fetched once into the cache (resumable, size-checked)
        import hashlib

        from olmo_jax.data.assets import cache_dir
        from olmo_jax.data.download import download

        name = hashlib.sha256(yaml_path.encode()).hexdigest()[:16] + "-" + yaml_path.rsplit("/", 1)[-1]
        yaml_path = str(download(yaml_path, cache_dir() / "olmo-configs" / name, progress=False))
    path = Path(yaml_path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir() or path.name == CONFIG_FILE:
        olmo = read_config_yaml(folder)
    else:
        import yaml

        olmo = yaml.safe_load(path.read_text())
    mapped = map_olmo_config(olmo, str(path))
    c.update_from_flattened_dict(mapped.overrides)
    for note in mapped.notes:
        print(f"note: {note}", file=sys.stderr)
    return c
