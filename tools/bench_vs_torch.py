"""Our train step against PyTorch eager on CPU: the same small OLMo, batch, threads and optimizer, side by side.

    python tools/bench_vs_torch.py [--d_model 256 --n_layers 4 --n_heads 4 --seq_len 256 --batch 8 --microbatch 8]
                                   [--steps 8 --warmup 2 --threads N] [--torch_compile] [--json]

Both sides train the same model in fp32: OLMo's architecture at the given size with OLMo-1B's 50,304-row tied
embedding (transformers' OlmoForCausalLM on the torch side, loaded from our initial weights written with
`olmo_jax.hf.save_hf`), on the same batches of random token ids split into the same microbatches, with the same mean
next-token cross-entropy, global-norm clipping at 1.0 and AdamW (lr 4e-4, betas (0.9, 0.95), eps 1e-5, weight decay
0.1, none on the embedding). So both print the same losses, step after step, to float rounding: the check that the
two do the same work. Ours is the trainer's jitted step (olmo_jax.benchmark), timed with block_until_ready;
torch's is zero_grad + forward/backward per microbatch + clip + AdamW.step, timed with perf_counter (CPU work is
synchronous). Both run in one process pinned to the first --threads CPUs (torch.set_num_threads; XLA sizes its thread
pool from the CPUs it may run on): --warmup untimed steps each, then --steps timed steps taken in turn, one of each
side, so that a change in machine load (shared machines) hits both alike; the medians are compared.
--torch_compile adds torch.compile(model) as a third, optional side.

Our step computes the whole loss at once here (loss_chunk_size = seq_len): the chunked loss exists to bound GPU
memory at 1B and would recompute the logits in the backward pass for nothing at this size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LR, BETAS, EPS, WEIGHT_DECAY, MAX_GRAD_NORM = 4e-4, (0.9, 0.95), 1e-5, 0.1, 1.0  # OLMo-1B.yaml's optimizer


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--n_layers", type=int, default=4)
    parser.add_argument("--n_heads", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50304, help="embedding rows (OLMo-1B's padded vocabulary)")
    parser.add_argument("--batch", type=int, default=8, help="rows per optimizer step")
    parser.add_argument("--microbatch", type=int, default=8, help="rows per forward/backward")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPUs both sides run on")
    parser.add_argument("--torch_compile", action="store_true", help="also time torch.compile(model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.batch % args.microbatch:
        parser.error(f"--batch={args.batch} must be a multiple of --microbatch={args.microbatch}")
    cpus = sorted(os.sched_getaffinity(0))
    if not 1 <= args.threads <= len(cpus):
        parser.error(f"--threads={args.threads} must be between 1 and the {len(cpus)} CPUs this process may use")
    return args


def overrides(args: argparse.Namespace) -> list[str]:
    """configs/tiny.py turned into the benchmark's model, batch and optimizer (fp32, one device)."""
    return [
        f"model.d_model={args.d_model}", f"model.n_layers={args.n_layers}", f"model.n_heads={args.n_heads}",
        f"model.max_sequence_length={args.seq_len}", f"model.embedding_size={args.vocab}",
        f"model.vocab_size={min(args.vocab, 50280)}", f"model.eos_token_id={min(args.vocab, 50280) - 1}",
        "model.remat=none", "model.attention_impl=xla",
        "precision=fp32", f"global_train_batch_size={args.batch}", f"device_train_microbatch_size={args.microbatch}",
        f"loss_chunk_size={args.seq_len}", f"optimizer.learning_rate={LR}", f"optimizer.betas={BETAS}",
        f"optimizer.eps={EPS}", f"optimizer.weight_decay={WEIGHT_DECAY}", f"max_grad_norm={MAX_GRAD_NORM}",
        "scheduler.name=constant", "mesh.data=1", "mesh.fsdp=1",
    ]


class JaxSide:
    """The trainer's jitted step (olmo_jax.benchmark), compiled ahead of time."""

    def __init__(self, args: argparse.Namespace, config: Any) -> None:
        import jax

        from olmo_jax.benchmark import compile_step, synthetic_batches

        self.jax = jax
        self.step = compile_step(config)
        self.batches = synthetic_batches(self.step, 2)
        self.state = self.step.jitted.init(jax.random.key(0))
        self.losses: list[Any] = []  # on device until read: no host sync inside a timed step
        self.version = f"jax {jax.__version__}"

    def __call__(self, i: int) -> None:
        self.state, metrics = self.step.executable(self.state, self.batches[i % 2])
        self.jax.block_until_ready((self.state, metrics))
        self.losses.append(metrics["train/loss"])

    def loss_history(self) -> list[float]:
        return [float(x) for x in self.losses]


class TorchSide:
    """transformers' OlmoForCausalLM with torch.optim.AdamW, eager (or torch.compile'd)."""

    def __init__(self, args: argparse.Namespace, weights: Path, batches: list[Any], compiled: bool) -> None:
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.OlmoForCausalLM.from_pretrained(weights, dtype=torch.float32).train()
        named = list(self.model.named_parameters())
        decay = [p for n, p in named if "embed_tokens" not in n]
        no_decay = [p for n, p in named if "embed_tokens" in n]  # OLMo: no weight decay on the embedding
        self.optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=LR,
                                           betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.accum = args.batch // args.microbatch
        self.batches = [torch.from_numpy(b.astype("int64")) for b in batches]
        self.losses: list[float] = []
        self.version = f"torch {torch.__version__}" + (" (torch.compile)" if compiled else " (eager)")

    def __call__(self, i: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        total = self.torch.zeros(())
        for ids in self.batches[i % 2]:  # HF's loss is the mean over the microbatch's B·(T−1) targets, as ours
            loss = self.forward(input_ids=ids, labels=ids).loss / self.accum
            loss.backward()
            total += loss.detach()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.losses.append(float(total))

    def loss_history(self) -> list[float]:
        return self.losses


def race(sides: dict[str, Any], warmup: int, steps: int) -> dict[str, list[float]]:
    """Warm every side up, then time one step of each in turn, rotating who goes first: drifts in machine load hit
    every side alike."""
    for i in range(warmup):
        for side in sides.values():
            side(i)
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(steps):
        for name in names[i % len(names):] + names[: i % len(names)]:
            start = time.perf_counter()
            sides[name](warmup + i)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cpus)  # before XLA sizes its thread pool from the CPUs it may use
    import numpy as np
    import torch
    import transformers

    from olmo_jax.config import load_config
    from olmo_jax.hf import save_hf

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    config = load_config(ROOT / "configs" / "tiny.py", overrides(args))
    ours = JaxSide(args, config)
    batches = [np.asarray(b) for b in ours.batches]
    with tempfile.TemporaryDirectory(prefix="bench_vs_torch-") as weights:  # torch starts from our initial weights
        save_hf(config.model, ours.state.params, weights)
        sides: dict[str, Any] = {"jax": ours, "torch": TorchSide(args, Path(weights), batches, compiled=False)}
        if args.torch_compile:
            sides["torch_compile"] = TorchSide(args, Path(weights), batches, compiled=True)
    load_before = os.getloadavg()
    times = race(sides, args.warmup, args.steps)
    tokens = args.batch * args.seq_len
    result: dict[str, Any] = {
        "model": {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads,
                  "seq_len": args.seq_len, "vocab": args.vocab, "params": config.model.num_params()},
        "batch": args.batch, "microbatch": args.microbatch, "tokens_per_step": tokens, "threads": args.threads,
        "cpus": cpus, "steps": args.steps, "warmup": args.warmup,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    for name, side in sides.items():
        median = statistics.median(times[name])
        losses = side.loss_history()
        result[name] = {"tokens_per_second": tokens / median, "step_time_median": median, "step_times": times[name],
                        "first_loss": losses[0], "loss": losses[-1], "version": side.version}
    for name in list(sides)[1:]:
        result[f"ratio_vs_{name}"] = result["jax"]["tokens_per_second"] / result[name]["tokens_per_second"]
    if args.json:
        print(json.dumps(result))
        return 0
    m = result["model"]
    print(f"OLMo d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, seq {m['seq_len']}, vocab "
          f"{m['vocab']} ({m['params']:,} params), fp32; batch {args.batch} in microbatches of {args.microbatch} "
          f"({tokens:,} tokens/step); {args.threads} threads; {args.warmup} warm-up + {args.steps} timed steps "
          "per side, interleaved")
    for name in sides:
        r = result[name]
        print(f"{name:>14}: {r['tokens_per_second']:9,.0f} tokens/s  median step {r['step_time_median']:.3f} s "
              f"(min {min(r['step_times']):.3f}, max {max(r['step_times']):.3f}); loss {r['first_loss']:.4f} → "
              f"{r['loss']:.4f}; {r['version']}")
    for name in list(sides)[1:]:
        print(f"ours / {name}: {result[f'ratio_vs_{name}']:.2f}×")
    print("load average (1, 5, 15 min) before: " + ", ".join(f"{x:.2f}" for x in load_before)
          + "; after: " + ", ".join(f"{x:.2f}" for x in result["load_average"]["after"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
