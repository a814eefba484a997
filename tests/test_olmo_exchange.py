"""Full training state between olmo_jax and OLMo's own trainer (docs/olmo-exchange.md), proved against checkpoints
and per-step losses that ai2-olmo 0.6.0's Trainer wrote (tests/fixtures/olmo, made by tools/make_olmo_fixtures.py):
an import continues OLMo's run with OLMo's losses, an export holds exactly OLMo's layout, a round trip is exact, an
epoch boundary and the data position carry over, and bad input is one clear error."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT

from olmo_jax.config import config_dict, load_config
from olmo_jax.data.order import Batches
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.errors import ConversionError, TrainingError
from olmo_jax.model.transformer import OLMo
from olmo_jax.train.exchange import examples_position, export_to_olmo, import_from_olmo, local_checkpoint
from olmo_jax.train.metrics import read_metrics
from olmo_jax.train.olmo_config import map_olmo_config
from olmo_jax.train.olmo_files import load_pt, read_config_yaml
from olmo_jax.train.olmo_native import read_olmo_checkpoint
from olmo_jax.train.trainer import train

torch = pytest.importorskip("torch")  # a test-only dependency (the [olmo] extra for users)

FIXTURES = ROOT / "tests" / "fixtures" / "olmo"
STEP4 = FIXTURES / "run" / "step4-unsharded"
REFERENCE = json.loads((FIXTURES / "losses.json").read_text())["steps"]


def _config(run_dir: Path, *extra: str, source: Path = STEP4):
    return load_config(f"{ROOT / 'configs' / 'olmo_yaml.py'}:{source}", [
        f"data.paths={FIXTURES / 'tokens.npy'}", f"save_folder={run_dir}", "tensorboard=False",
        "console_log_interval=1", "evaluators=()", "save_interval=4", *extra])


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


def test_the_olmo_yaml_maps_onto_our_config() -> None:
    config = _config(Path("unused"))
    assert config.loss_normalization == "tokens"  # written by ai2-olmo 0.6.0, which divides by B·T
    assert (config.model.d_model, config.model.n_heads, config.model.mlp_ratio, config.model.embedding_size) == (
        32, 4, 8, 256)
    assert (config.max_duration, config.global_train_batch_size, config.device_train_microbatch_size) == (8, 4, 2)
    assert config.optimizer.eps == 1e-5 and config.scheduler.t_warmup == 2 and config.precision == "fp32"


def test_the_data_order_is_olmos() -> None:
    """The instances of each of OLMo's 8 steps are those olmo_jax draws at that step."""
    files = TokenFiles((str(FIXTURES / "tokens.npy"),), "uint16", 32)
    batches = Batches(files, 6198, 4, 2)
    for step in range(8):
        assert sorted(batches.instance_ids(step).ravel().tolist()) == sorted(REFERENCE[str(step + 1)]["indices"])


@pytest.mark.slow
def test_an_imported_olmo_checkpoint_continues_with_olmos_losses(tmp_path: Path) -> None:
    """OLMo's step-4 checkpoint, continued here for 4 steps, gives OLMo's own losses for steps 5-8 (fp32, relative
    difference ≤ 1e-5 per step), from the same token file."""
    train(_config(tmp_path, f"load_path={STEP4}"))
    ours = _losses(tmp_path)
    assert sorted(ours) == [5, 6, 7, 8]
    for step, loss in ours.items():
        reference = REFERENCE[str(step)]["loss"]
        assert abs(loss - reference) <= 1e-5 * abs(reference), (step, loss, reference)


def test_imported_weights_give_olmos_logits() -> None:
    olmo = read_olmo_checkpoint(STEP4)
    ids = np.fromfile(FIXTURES / "tokens.npy", np.uint16)[:32].astype(np.int32)[None]
    logits = OLMo(olmo.model).apply({"params": jax.tree.map(np.asarray, olmo.params)}, ids)
    np.testing.assert_allclose(np.asarray(logits), np.load(FIXTURES / "logits.npy"), rtol=1e-5, atol=2e-5)


def _pt(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)  # our own fixture files and our exports


@pytest.mark.slow
def test_import_then_export_is_exact_tensor_for_tensor(tmp_path: Path) -> None:
    """tools/convert_from_olmo.py then tools/convert_to_olmo.py give back OLMo's weights, moments, steps, decay
    groups and trainer position exactly."""
    from conftest import run_python

    imported = run_python("tools/convert_from_olmo.py", "--checkpoint", str(STEP4), "--output", str(tmp_path / "jax"))
    assert imported.returncode == 0 and "step 4" in imported.stdout, imported.stderr[-2000:]
    exported = run_python("tools/convert_to_olmo.py", "--checkpoint", str(tmp_path / "jax"), "--output",
                          str(tmp_path / "olmo"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    out = tmp_path / "olmo" / "step4-unsharded"
    original, back = _pt(STEP4 / "model.pt"), _pt(out / "model.pt")
    assert sorted(back) == sorted(k.replace("_fsdp_wrapped_module.", "") for k in original)
    for name, tensor in original.items():
        assert torch.equal(back[name.replace("_fsdp_wrapped_module.", "")], tensor), name
    optim, optim_back = _pt(STEP4 / "optim.pt"), _pt(out / "optim.pt")
    for name, entry in optim["state"].items():
        mine = optim_back["state"][name]
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(mine[key], entry[key]), (name, key)
    groups = {g["weight_decay"]: sorted(g["params"]) for g in optim["param_groups"]}
    assert {g["weight_decay"]: sorted(g["params"]) for g in optim_back["param_groups"]} == groups
    assert [sorted(g) for g in optim_back["param_groups"]] == [sorted(g) for g in optim["param_groups"]]
    for group, mine in zip(optim["param_groups"], optim_back["param_groups"], strict=True):
        assert mine["lr"] == pytest.approx(group["lr"], rel=1e-6) and tuple(mine["betas"]) == tuple(group["betas"])
    trainer, trainer_back = _pt(STEP4 / "train.pt"), _pt(out / "train.pt")
    for key in ("epoch", "global_step", "global_train_examples_seen_this_epoch", "global_train_tokens_seen"):
        assert trainer_back[key] == trainer[key], key
    assert map_olmo_config(read_config_yaml(out), "export").overrides == map_olmo_config(
        read_config_yaml(STEP4), "fixture").overrides | {"data.paths": ("tokens.npy",)}


@pytest.mark.slow
def test_an_export_at_an_epoch_end_resumes_into_the_next_epoch(tmp_path: Path) -> None:
    """A run of the fixture's config to the end of its 62-step epoch, exported (train.pt: epoch 0, all 248 examples
    seen, as OLMo writes it) and continued from the OLMo directory, gives the losses of a straight run across the
    boundary, bitwise."""
    straight = tmp_path / "straight"
    longer = ("max_duration=64", "stop_at=64", "save_interval=62")  # the fixture's config.yaml says stop_at: 8
    train(_config(straight, *longer))
    out, note = export_to_olmo(straight / "checkpoints" / "62", tmp_path / "olmo",
                               config_dict(ROOT / "configs" / "1b.py").to_dict())
    assert note == ""
    trainer = _pt(out / "train.pt")
    assert (trainer["epoch"], trainer["global_step"], trainer["global_train_examples_seen_this_epoch"]) == (0, 62, 248)
    resumed = tmp_path / "resumed"
    train(_config(resumed, *longer, f"load_path={out}", source=out))
    assert _losses(resumed) == {s: v for s, v in _losses(straight).items() if s > 62}


def test_examples_position_counts_an_epochs_last_step_in_it() -> None:
    assert examples_position(0, 4, 62) == (0, 0)
    assert examples_position(61, 4, 62) == (0, 244)
    assert examples_position(62, 4, 62) == (0, 248)
    assert examples_position(63, 4, 62) == (1, 4)


def _copy_fixture(tmp_path: Path) -> Path:
    copy = tmp_path / "step4-unsharded"
    shutil.copytree(STEP4, copy)
    return copy


@pytest.mark.slow
def test_a_data_position_that_is_not_this_runs_is_refused(tmp_path: Path) -> None:
    copy = _copy_fixture(tmp_path)
    state = _pt(copy / "train.pt")
    state["global_train_examples_seen_this_epoch"] = 20  # e.g. fast_forward_batches, or a batch size changed
    torch.save(state, copy / "train.pt")
    with pytest.raises(TrainingError, match=r"step 4 with 20 examples seen .* after 16 .* would not be OLMo's"):
        train(_config(tmp_path / "run", f"load_path={copy}"))


def test_a_pickled_object_outside_the_allowlist_is_refused_naming_it(tmp_path: Path) -> None:
    import datetime

    copy = _copy_fixture(tmp_path)
    state = _pt(copy / "train.pt")
    state["when"] = datetime.datetime(2024, 2, 1)
    torch.save(state, copy / "train.pt")
    with pytest.raises(ConversionError, match=r"train\.pt holds an object of type datetime\.datetime, which olmo_jax "
                                              r"does not unpickle"):
        load_pt(copy / "train.pt")
    assert load_pt(STEP4 / "train.pt")["global_step"] == 4  # paths and NumPy RNG states are allowed


def test_options_olmo_jax_cannot_reproduce_are_listed(tmp_path: Path) -> None:
    olmo = read_config_yaml(STEP4)
    olmo["model"] |= {"include_bias": True, "attention_dropout": 0.1}
    olmo["scheduler"]["units"] = "tokens"
    with pytest.raises(ConversionError, match=r"(?s)does not reproduce:.*model\.include_bias=True.*"
                                              r"attention_dropout=0\.1.*scheduler\.units='tokens'"):
        map_olmo_config(olmo, "config.yaml")
    del olmo["distributed_strategy"], olmo["optimizer"]["record_update_metrics"]
    olmo["model"] |= {"include_bias": False, "attention_dropout": 0.0}
    olmo["scheduler"]["units"] = "steps"
    assert map_olmo_config(olmo, "x").overrides["loss_normalization"] == "targets"  # an ai2-olmo ≤ 0.3.0 dump
    assert map_olmo_config({"model": olmo["model"], "global_train_batch_size": 4, "max_duration": "2048T"},
                           "x").overrides["max_duration"] == 16  # tokens / (4 × 32)


def test_the_commands_say_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    from conftest import run_python

    missing = run_python("tools/convert_from_olmo.py", "--checkpoint", str(tmp_path), "--output", str(tmp_path / "o"))
    assert missing.returncode == 1 and missing.stderr.count("error:") == 1 and "config.yaml" in missing.stderr
    (tmp_path / "o" / "checkpoints" / "4").mkdir(parents=True)
    taken = run_python("tools/convert_from_olmo.py", "--checkpoint", str(STEP4), "--output", str(tmp_path / "o"))
    assert taken.returncode == 1 and "never replaces" in taken.stderr, taken.stderr[-1000:]


def test_a_checkpoint_at_a_url_is_fetched_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_path and tools/convert_from_olmo.py take an http(s) URL: the files are fetched into the cache through
    olmo_jax/data/download.py (here from a local server), and a second use fetches nothing."""
    import functools
    import http.server
    import threading

    bodies = []

    class Counting(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # HEAD probes are not counted: only what sends a file
            bodies.append(self.path)
            super().do_GET()

    handler = functools.partial(Counting, directory=str(FIXTURES / "run"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OLMO_JAX_CACHE", str(tmp_path / "cache"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/step4-unsharded"
        step_dir, step = import_from_olmo(local_checkpoint(url), tmp_path / "a", _config(tmp_path / "a"))
        first = list(bodies)
        import_from_olmo(local_checkpoint(url), tmp_path / "b", _config(tmp_path / "b"))
    finally:
        server.shutdown()
    assert step == 4 and step_dir.is_dir()
    assert sorted(first) == sorted(f"/step4-unsharded/{f}" for f in ("config.yaml", "model.pt", "optim.pt",
                                                                       "train.pt"))
    assert bodies == first  # the second import fetched nothing
    fetched = next((tmp_path / "cache" / "olmo-checkpoints").iterdir())
    assert (fetched / "model.pt").read_bytes() == (STEP4 / "model.pt").read_bytes()


@pytest.mark.slow
def test_the_exchange_bench_reports_what_it_measured(tmp_path: Path) -> None:
    from conftest import run_python

    proc = run_python("tools/bench_olmo_exchange.py", f"--config={ROOT / 'tests' / 'configs' / 'micro.py'}",
                      "--workdir", str(tmp_path / "work"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["round_trip_exact"] is True
    assert figures["export_s"] > 0 and figures["import_s"] > 0 and figures["export_peak_rss_gb"] > 0
    assert figures["olmo_files_gb"] > 0.9 * figures["state_gb"]  # weights, both moments (and a little more)
    from olmo_jax.errors import UsageError
    from tools.bench_olmo_exchange import run

    with pytest.raises(UsageError, match="exists; give a new folder"):  # nothing is written over
        run(["--workdir", str(tmp_path / "work")])


def test_without_torch_the_pt_path_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ConversionError, match=r"needs PyTorch, which is not installed: pip install -e \"\.\[olmo\]\""):
        load_pt(STEP4 / "train.pt")


def test_olmos_safetensors_files_are_read_without_unpickling_code(tmp_path: Path) -> None:
    """model.safetensors as OLMo's safetensors_util writes it (each key a base64 pickle of (key path, is-pickled)),
    tried before model.pt: the same weights. A key whose pickle names a global is not decoded as one."""
    import base64
    import pickle

    from safetensors.numpy import save_file

    copy = tmp_path / "step4-unsharded"
    copy.mkdir()
    shutil.copy(STEP4 / "config.yaml", copy / "config.yaml")
    weights = {name: tensor.numpy() for name, tensor in _pt(STEP4 / "model.pt").items()}
    save_file({base64.urlsafe_b64encode(pickle.dumps(((name,), False))).decode(): array
               for name, array in weights.items()}, copy / "model.safetensors")
    from_safetensors = read_olmo_checkpoint(copy, weights_only=True).params
    from_pt = read_olmo_checkpoint(STEP4, weights_only=True).params
    jax.tree.map(np.testing.assert_array_equal, from_safetensors, from_pt)

    from olmo_jax.train.olmo_files import load_safetensors_state

    evil = base64.urlsafe_b64encode(pickle.dumps((("x",), False)).replace(b"x", b"y")).decode()  # still plain data
    hostile = base64.urlsafe_b64encode(pickle.dumps(shutil.rmtree)).decode()  # would name a global
    save_file({evil: np.zeros(1, np.float32), hostile: np.ones(1, np.float32)}, tmp_path / "odd.safetensors")
    state = load_safetensors_state(tmp_path / "odd.safetensors")
    assert set(state) == {"y", hostile}  # the global-naming key stays a plain string: nothing was run
