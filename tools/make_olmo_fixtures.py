"""Write OLMo-native test fixtures with OLMo's own trainer (PyPI `ai2-olmo==0.6.0`), for tests/fixtures/olmo/.

A tiny OLMo-1B-shaped model (d_model 32, 4 heads, 2 layers, SwiGLU, RoPE, non-affine LayerNorm, no biases, tied
embeddings, vocab 250 padded to 256) trains for 8 steps on CPU in one process with OLMo-1B's optimizer settings,
through `olmo.train.Trainer` as OLMo's scripts/train.py sets it up (FSDP over gloo, world size 1, by default).
What it writes under --output:

    tokens.npy      8,000 uint16 token ids, raw (no .npy header), the training data
    losses.json     per step: OLMo's train/CrossEntropyLoss, learning rate, total grad norm, instance indices
    logits.npy      float32 [1, 32, 256]: the step-4 model's logits for the first 32 tokens of tokens.npy
    run/            OLMo's save folder: config.yaml, step0-, step4- and step8-unsharded/ (model.pt, optim.pt,
                    train.pt, config.yaml), latest-unsharded -> step8-unsharded, data-indices/, train_data/

The script needs OLMo installed, which the project's own environment does not have; it lives in a separate venv:

    python3.11 -m venv /work/olmo-venv
    /work/olmo-venv/bin/pip install torch==2.13.0   # first, so that pip keeps this (CPU) torch
    /work/olmo-venv/bin/pip install torch==2.13.0 ai2-olmo==0.6.0 datasets==3.6.0 pyarrow==19.0.1 \\
        wandb torchmetrics scikit-learn

Regenerate the fixtures (the output directory must not exist yet):

    rm -r tests/fixtures/olmo
    /work/olmo-venv/bin/python tools/make_olmo_fixtures.py --output tests/fixtures/olmo

Resume OLMo's trainer from an unsharded checkpoint (OLMo's `--load_path`: model, optimizer and trainer state,
restore_dataloader) for K steps with the checkpoint's config.yaml, and write DIR2/losses.json in the same format;
this checks checkpoints that olmo_jax exports:

    /work/olmo-venv/bin/python tools/make_olmo_fixtures.py --resume tests/fixtures/olmo/run/step4-unsharded \\
        --steps 4 --output /tmp/resumed

Relative paths in the checkpoint's config (data.paths) are taken from the directory the run was started in
(the checkpoint's save folder's parent for the fixtures' `save_folder: run`); --data overrides them.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import socket
import struct
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from olmo.config import TrainConfig

OLMO_VERSION = "0.6.0"
NUM_STEPS = 8
SEQUENCE_LENGTH = 32
RUN_FOLDER = "run"  # OLMo's save_folder, relative to the output directory
TOKENS_FILE = "tokens.npy"

LOSS_NORMALISATION = (
    "ai2-olmo 0.6.0, olmo/train.py: Trainer.train_batch sets batch_size_in_tokens = batch['input_ids'].numel(), "
    "i.e. B*T of the whole device batch (T = max_sequence_length, every micro-batch alike); "
    "Trainer.train_micro_batch calls Trainer.model_forward with loss_reduction='sum', which sums the cross-entropy "
    "over the B*(T-1) shifted target positions (logits[..., :-1, :] against input_ids[..., 1:], label -100 "
    "ignored), and divides that sum by batch_size_in_tokens. So train/CrossEntropyLoss = sum over B*(T-1) "
    "targets / (B*T), not a mean over targets; it is (T-1)/T = 31/32 of the per-target mean here."
)


class UserError(Exception):
    """A mistake in the command line: reported as one `error:` line."""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tools/make_olmo_fixtures.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", required=True, type=Path, help="directory to create (must not exist)")
    parser.add_argument("--resume", type=Path, metavar="CHECKPOINT_DIR",
                        help="resume from this OLMo unsharded checkpoint instead of training from scratch")
    parser.add_argument("--steps", type=int, help="with --resume: train this many steps past the checkpoint")
    parser.add_argument("--data", type=Path, action="append",
                        help="with --resume: token file(s) to train on instead of the checkpoint config's data.paths")
    parser.add_argument("--strategy", choices=["fsdp", "ddp"],
                        help="OLMo distributed_strategy of a fresh run (default fsdp, as OLMo-1B was trained); "
                             "both give bitwise the same losses and weights, only optim.pt's layout differs")
    return parser


def write_tokens(path: Path) -> None:
    """8,000 token ids below 250, mostly the repeating pattern 0..39 so the model has something to learn."""
    import numpy as np

    rng = np.random.default_rng(0)
    size = 40 * 200
    ids = np.where(rng.random(size) < 0.8, np.tile(np.arange(40), 200), rng.integers(0, 250, size))
    ids.astype(np.uint16).tofile(path)


def fixture_config(strategy: str) -> TrainConfig:
    """The tiny OLMo-1B-shaped TrainConfig, paths relative to the output directory (the working directory)."""
    from olmo.config import (
        DataConfig,
        DDPConfig,
        DistributedStrategy,
        FSDPConfig,
        ModelConfig,
        OptimizerConfig,
        SchedulerConfig,
        TrainConfig,
    )

    model = ModelConfig(
        d_model=32, n_heads=4, n_layers=2, mlp_ratio=8, weight_tying=True, alibi=False, rope=True,
        flash_attention=False, attention_dropout=0.0, attention_layer_norm=False, multi_query_attention=False,
        include_bias=False, block_type="sequential", layer_norm_type="default", layer_norm_with_affine=False,
        bias_for_layer_norm=False, attention_layer_norm_with_affine=False, activation_type="swiglu",
        residual_dropout=0.0, embedding_dropout=0.0, max_sequence_length=SEQUENCE_LENGTH, vocab_size=250,
        embedding_size=256, eos_token_id=249, pad_token_id=1, init_device="cpu", init_fn="mitchell",
    )
    # OLMo-1B's official config (configs/official-0724/OLMo-1B.yaml) leaves decay_norm_and_bias and
    # decay_embeddings at their defaults (False): the embedding is not decayed; this model has no norm weights
    # or biases.
    optimizer = OptimizerConfig(
        name="adamw", learning_rate=4e-4, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-5,
        decay_norm_and_bias=False, decay_embeddings=False,
    )
    return TrainConfig(
        run_name="olmo-jax-fixture",
        seed=6198,
        model=model,
        optimizer=optimizer,
        scheduler=SchedulerConfig(name="cosine_with_warmup", t_warmup=2, alpha_f=0.1),
        data=DataConfig(paths=[TOKENS_FILE], memmap_dtype="uint16", drop_last=True, num_workers=0),
        save_folder=RUN_FOLDER,
        save_interval=None,
        save_num_checkpoints_to_keep=0,  # no sharded checkpoints
        save_interval_unsharded=4,
        save_num_unsharded_checkpoints_to_keep=-1,
        max_duration=NUM_STEPS,
        stop_at=NUM_STEPS,  # Trainer.fit would otherwise run max_duration + 10 steps (stop_at = max_steps + 10)
        global_train_batch_size=4,
        device_train_microbatch_size=2,
        precision="fp32",
        max_grad_norm=1.0,
        console_log_interval=1,
        evaluators=[],
        wandb=None,
        distributed_strategy=DistributedStrategy(strategy),
        fsdp=FSDPConfig(wrapping_strategy=None, precision="mixed"),
        ddp=DDPConfig() if strategy == "ddp" else None,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_single_process_group() -> None:
    """torch.distributed over gloo with one rank, as torchrun would set it up for OLMo."""
    import torch.distributed as dist

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", NODE_RANK="0",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group(backend="gloo")


def install_cpu_stand_ins() -> None:
    """What OLMo's Trainer needs from torch on a machine without CUDA.

    Trainer.trainer_state_dict stores torch.cuda.get_rng_state() in train.pt and Trainer.restore_rng_state calls
    torch.cuda.set_rng_state(); neither works without CUDA. The stand-in reports the state a CUDA generator
    seeded like the CPU one (OLMo's seed_all seeds both) has before drawing anything: 16 bytes, the uint64 seed
    then the int64 Philox offset 0, the layout of torch's CUDAGeneratorImpl::get_state. Setting it is a no-op.

    torch >= 2.6 loads with weights_only=True, so OLMo's own torch.load of train.pt needs the non-tensor types
    it holds allowlisted: checkpoint paths (pathlib) and numpy's legacy RNG state (an ndarray and its dtype).
    """
    import pathlib

    import numpy as np
    import torch

    if not torch.cuda.is_available():

        def get_rng_state(device: Any = "cuda") -> torch.Tensor:
            del device
            return torch.frombuffer(bytearray(struct.pack("<Qq", torch.initial_seed(), 0)), dtype=torch.uint8)

        def set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
            del new_state, device

        torch.cuda.get_rng_state = get_rng_state
        torch.cuda.set_rng_state = set_rng_state

    torch.serialization.add_safe_globals([
        pathlib.PosixPath,
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
        np.core.multiarray._reconstruct,
    ])


def _recording_trainer_class() -> type:
    from olmo.train import Trainer

    class RecordingTrainer(Trainer):
        """OLMo's Trainer, noting what each train_step saw and computed (the step itself is untouched)."""

        def __post_init__(self) -> None:
            super().__post_init__()
            self.records: dict[str, dict[str, Any]] = {}

        def train_step(self, batch: dict[str, Any], reduce_global_loss: bool = True) -> dict[str, float]:
            indices = [int(i) for i in batch["index"]]
            metrics = super().train_step(batch, reduce_global_loss=reduce_global_loss)
            lrs = {group["lr"] for group in self.optim.param_groups}
            assert len(lrs) == 1, lrs
            self.records[str(self.global_step)] = {
                "loss": metrics["train/CrossEntropyLoss"],
                "lr": lrs.pop(),
                "grad_norm": metrics["optim/total_grad_norm"],
                "indices": indices,
            }
            return metrics

    return RecordingTrainer


def train(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """OLMo's scripts/train.py `main` on CPU; returns the per-step records. The working directory is the run's."""
    import torch
    from olmo.config import CheckpointType, DistributedStrategy
    from olmo.data import build_train_dataloader
    from olmo.model import OLMo
    from olmo.optim import build_optimizer, build_scheduler
    from olmo.torch_util import seed_all
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = torch.device("cpu")  # scripts/train.py: cuda, and DDP only with init_device cuda
    cfg.model.precision = cfg.precision
    cfg.device_train_batch_size = cfg.global_train_batch_size  # world size 1
    cfg.device_train_grad_accum = cfg.device_train_batch_size // cfg.device_train_microbatch_size
    if cfg.load_path is None or Path(cfg.load_path).parent != Path(cfg.save_folder):
        Path(cfg.save_folder).mkdir(parents=True, exist_ok=True)
        cfg.save(Path(cfg.save_folder) / "config.yaml")

    seed_all(cfg.seed)
    train_loader = build_train_dataloader(cfg)
    olmo_model = OLMo(cfg.model)
    olmo_model.set_activation_checkpointing(cfg.activation_checkpointing)
    if cfg.distributed_strategy == DistributedStrategy.ddp:
        dist_model = DDP(olmo_model.to(device), find_unused_parameters=cfg.ddp.find_unused_params)
    else:
        dist_model = FSDP(
            olmo_model,
            sharding_strategy=cfg.fsdp.sharding_strategy,
            mixed_precision=cfg.fsdp_precision,
            auto_wrap_policy=olmo_model.get_fsdp_wrap_policy(cfg.fsdp.wrapping_strategy),
            use_orig_params=cfg.fsdp.use_orig_params,
            limit_all_gathers=True,
            device_id=device,
            param_init_fn=lambda module: module.to_empty(device=device),
        )
    olmo_model.reset_parameters()  # scripts/train.py initialises after wrapping, for DDP and FSDP alike
    optim = build_optimizer(cfg, dist_model)
    scheduler = build_scheduler(cfg)
    with ExitStack() as stack:
        indices_file = None
        if cfg.save_data_indices:  # OLMo's own per-step record of batch["index"]
            indices_path = Path(cfg.save_folder) / "data-indices" / "rank0.tsv.gz"
            indices_path.parent.mkdir(parents=True, exist_ok=True)
            # gzip.open(indices_path, "wt") as in scripts/train.py, less the time stamp in the gzip header
            indices_file = stack.enter_context(io.TextIOWrapper(gzip.GzipFile(indices_path, "wb", mtime=0)))
        trainer = stack.enter_context(_recording_trainer_class()(
            cfg=cfg, epoch=cfg.epoch, model=olmo_model, dist_model=dist_model, optim=optim, scheduler=scheduler,
            train_loader=train_loader, device=device, evaluators=[], indices_file=indices_file,
        ))
        if cfg.load_path is None:
            # scripts/train.py saves a pre-train checkpoint and loads it back before training.
            checkpoint_type = (
                CheckpointType.unsharded
                if cfg.distributed_strategy == DistributedStrategy.ddp or cfg.save_num_checkpoints_to_keep == 0
                else CheckpointType.sharded
            )
            path, local_cache = trainer.save_checkpoint(checkpoint_type=checkpoint_type)
            trainer.restore_checkpoint(path, checkpoint_type=checkpoint_type, local_cache=local_cache)
        else:
            trainer.restore_checkpoint(cfg.load_path, checkpoint_type=CheckpointType.unsharded,
                                       load_optimizer_state=True, load_trainer_state=True)
        trainer.fit()
        return trainer.records


def write_logits(checkpoint: Path, tokens: Path, path: Path) -> None:
    """The checkpoint's fp32 logits [1, T, embedding_size] for the first T tokens of the token file."""
    import numpy as np
    import torch
    from olmo.model import OLMo

    model = OLMo.from_checkpoint(checkpoint)
    length = model.config.max_sequence_length
    input_ids = torch.from_numpy(np.fromfile(tokens, dtype=np.uint16)[:length].astype(np.int64))[None]
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    np.save(path, logits.to(torch.float32).numpy())


def write_losses(path: Path, records: dict[str, dict[str, Any]], cfg: TrainConfig, start_step: int) -> None:
    import torch

    content = {
        "olmo_version": OLMO_VERSION,
        "torch_version": torch.__version__,
        "distributed_strategy": str(cfg.distributed_strategy),
        "start_step": start_step,
        "loss_normalisation": LOSS_NORMALISATION,
        "steps": records,
    }
    path.write_text(json.dumps(content, indent=1) + "\n")


def resume_config(checkpoint: Path, data: list[Path] | None) -> tuple[TrainConfig, int]:
    """The checkpoint's TrainConfig set up to resume from it in the working directory, and its step."""
    import torch
    from olmo.config import TrainConfig

    if not (checkpoint / "config.yaml").is_file() or not (checkpoint / "train.pt").is_file():
        raise UserError(f"{checkpoint} is not an OLMo unsharded checkpoint (no config.yaml and train.pt in it)")
    cfg = TrainConfig.load(checkpoint / "config.yaml")
    if data is not None:
        paths = [p.resolve() for p in data]
    else:
        # Relative data paths are relative to where the run started: strip the save folder off the checkpoint's.
        origin = checkpoint.parent
        if not Path(cfg.save_folder).is_absolute():
            for _ in Path(cfg.save_folder).parts:
                origin = origin.parent
        paths = [p if p.is_absolute() else (origin / p).resolve() for p in map(Path, cfg.data.paths or [])]
    for p in paths:
        if not p.is_file():
            where = "--data" if data is not None else "the checkpoint's data.paths; pass --data"
            raise UserError(f"token file {p} does not exist ({where})")
    cfg.data.paths = [str(p) for p in paths]
    cfg.save_folder = RUN_FOLDER
    cfg.load_path = str(checkpoint)
    cfg.restore_dataloader = True
    cfg.reset_optimizer_state = False
    cfg.reset_trainer_state = False
    start_step = int(torch.load(checkpoint / "train.pt")["global_step"])
    return cfg, start_step


def run(args: argparse.Namespace) -> None:
    if args.output.exists():
        raise UserError(f"--output {args.output} already exists")
    if args.resume is None and (args.steps is not None or args.data is not None):
        raise UserError("--steps and --data go with --resume")
    if args.resume is not None and args.strategy is not None:
        raise UserError("--strategy goes with a fresh run: --resume keeps the checkpoint's")
    if args.resume is not None and (args.steps is None or args.steps < 1):
        raise UserError("--resume needs --steps K with K >= 1")
    from olmo.util import prepare_cli_environment

    prepare_cli_environment()
    install_cpu_stand_ins()
    if args.resume is not None:
        cfg, start_step = resume_config(args.resume.resolve(), args.data)
    output = args.output.resolve()
    output.mkdir(parents=True)
    os.chdir(output)  # OLMo's paths (data, save folder, the checkpoint list in train.pt) stay relative
    init_single_process_group()
    if args.resume is None:
        write_tokens(output / TOKENS_FILE)
        cfg = fixture_config(args.strategy or "fsdp")
        records = train(cfg)
        write_losses(output / "losses.json", records, cfg, start_step=0)
        write_logits(output / RUN_FOLDER / "step4-unsharded", output / TOKENS_FILE, output / "logits.npy")
    else:
        cfg.stop_at = start_step + args.steps
        records = train(cfg)
        write_losses(output / "losses.json", records, cfg, start_step=start_step)
    for step, record in records.items():
        print(f"step {step}: loss {record['loss']!r} lr {record['lr']!r}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
