"""The GPU XLA flags helper: adds its flags only on a GPU, never overrides the user's, can be turned off, and names
only flags this jaxlib knows (XLA aborts on an unknown one)."""

from __future__ import annotations

import importlib.metadata

import pytest
from conftest import run_python

from olmo_jax.parallel import xla_flags
from olmo_jax.parallel.xla_flags import CANDIDATE_GPU_FLAGS, DISABLE_ENV, RECOMMENDED_GPU_FLAGS, apply_recommended_flags


def test_flags_are_added_on_a_gpu_once() -> None:
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/dump"}
    added = apply_recommended_flags(env, gpu=True)
    assert added == [f"--{k}={v}" for k, v in RECOMMENDED_GPU_FLAGS.items()]
    assert env["XLA_FLAGS"].startswith("--xla_dump_to=/tmp/dump ")
    assert xla_flags.flag_names(env["XLA_FLAGS"]) == {"xla_dump_to", *RECOMMENDED_GPU_FLAGS}
    assert apply_recommended_flags(env, gpu=True) == []  # a second call adds nothing


def test_a_flag_the_user_set_is_left_as_set() -> None:
    name = next(iter(RECOMMENDED_GPU_FLAGS))
    env = {"XLA_FLAGS": f"--{name}=false"}
    assert apply_recommended_flags(env, gpu=True) == []
    assert env["XLA_FLAGS"] == f"--{name}=false"
    merged, added = xla_flags.merge_flags("--a=1 --b", {"a": "2", "c": "3"})
    assert merged == "--a=1 --b --c=3" and added == ["--c=3"]


@pytest.mark.parametrize("off", ["0", "false", "off", "No"])
def test_the_env_switch_turns_them_off(off: str) -> None:
    env = {DISABLE_ENV: off}
    assert apply_recommended_flags(env, gpu=True) == [] and "XLA_FLAGS" not in env


def test_nothing_is_added_off_a_gpu() -> None:
    env = {"JAX_PLATFORMS": "cpu"}
    assert apply_recommended_flags(env) == [] and "XLA_FLAGS" not in env


def test_gpu_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert xla_flags.gpu_expected({"JAX_PLATFORMS": "cuda,cpu"}) and xla_flags.gpu_expected({"JAX_PLATFORMS": "gpu"})
    assert not xla_flags.gpu_expected({"JAX_PLATFORMS": "cpu"}) and not xla_flags.gpu_expected({"JAX_PLATFORMS": "tpu"})

    class Dist:
        def __init__(self, name: str) -> None:
            self.metadata = {"Name": name}

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [Dist("numpy"), Dist("jax-cuda13-plugin")])
    assert xla_flags.gpu_expected({})
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [Dist("jax"), Dist("jaxlib")])
    assert not xla_flags.gpu_expected({})


def test_every_flag_we_may_set_is_known_to_this_jaxlib() -> None:
    flags = dict(RECOMMENDED_GPU_FLAGS)
    for candidate in CANDIDATE_GPU_FLAGS.values():
        flags |= candidate
    xla = " ".join(f"--{k}={v}" for k, v in flags.items())
    proc = run_python("-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))", timeout=120,
                      env={"XLA_FLAGS": xla, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0 and proc.stdout.strip() == "3.0", proc.stderr[-1000:]
    bogus = run_python("-c", "import jax.numpy as jnp; jnp.ones(3)", timeout=120,
                       env={"XLA_FLAGS": "--xla_gpu_no_such_flag=true", "JAX_PLATFORMS": "cpu"})
    assert bogus.returncode != 0 and "Unknown flag" in bogus.stderr  # what a renamed flag would do to a run
