"""Our train step against PyTorch eager on CPU: the same small OLMo, batch, threads and optimizer, side by side.

    python tools/bench_vs_torch.py [--d_model 256 --n_layers 4 --n_heads 4 --seq_len 256 --batch 8 --microbatch 8]
                                   [--steps 8 --warmup 2 --turn 2 --threads N] [--torch_compile] [--json]

Both sides train the same model in fp32: OLMo's architecture at the given size with OLMo-1B's 50,304-row tied
embedding (transformers' OlmoForCausalLM on the torch side, loaded from our initial weights written with
`olmo_jax.model.hf.save_hf`), on the same batches of random token ids split into the same microbatches, with the same
mean next-token cross-entropy, global-norm clipping at 1.0 and AdamW (lr 4e-4, betas (0.9, 0.95), eps 1e-5, weight
decay 0.1, none on the embedding). So both print the same losses, step after step, to float rounding: the check that
the two do the same work. Ours is the trainer's jitted step (olmo_jax.train.profiling), timed with block_until_ready;
torch's is zero_grad + forward/backward per microbatch + clip + AdamW.step, timed with perf_counter (CPU work is
synchronous).

Each side runs in its own worker process, pinned to the first --threads CPUs (torch.set_num_threads; XLA sizes its
thread pool from the CPUs it may run on), and steps when this process tells it to: --warmup untimed steps each, then
turns, rotating who goes first, so that a change in machine load (shared machines) hits every side alike: one
untimed step, then --turn timed steps, until each side has --steps timed steps; the medians are compared. Separate
processes and the untimed first step of a turn, because a side's first step after the other's is slowed by what
that one left behind: the previous version (one process, strict alternation) printed 0.54–0.60× at d_model 512,
8 layers, with our median step 6.2–7.0 s against fastest steps of 4.2–4.4 s (docs/performance.md), a cost a real
training run never pays. --torch_compile adds torch.compile(model) as a third side.

After the race each side also times its output layer's three matmuls alone (logits, their input gradient and their
weight gradient: 3 × 2·rows·d_model·vocab FLOPs, identical work on both sides) and the report gives the share of
each step they take: at the default size they are most of the step on both sides, which bounds how far apart the
two can be.

Our step computes the whole loss at once here (loss_chunk_size = seq_len): the chunked loss exists to bound GPU
memory at 1B and would recompute the logits in the backward pass for nothing at this size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from olmo_jax import cli
from olmo_jax.errors import OlmoJaxError

ROOT = Path(__file__).resolve().parents[1]
LR, BETAS, EPS, WEIGHT_DECAY, MAX_GRAD_NORM = 4e-4, (0.9, 0.95), 1e-5, 0.1, 1.0  # OLMo-1B.yaml's optimizer
SIDES = ("jax", "torch", "torch_compile")
REPLY = "@bench_vs_torch "  # marks a worker's replies on its stdout, which libraries may also print to


class WorkerError(OlmoJaxError):
    """A side's worker process ended before answering; its own error is printed above (on stderr)."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python tools/bench_vs_torch.py", description=__doc__)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--n_layers", type=int, default=4)
    parser.add_argument("--n_heads", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50304, help="embedding rows (OLMo-1B's padded vocabulary)")
    parser.add_argument("--batch", type=int, default=8, help="rows per optimizer step")
    parser.add_argument("--microbatch", type=int, default=8, help="rows per forward/backward")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--turn", type=int, default=2, help="timed steps a side takes in a row (after 1 untimed)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPUs both sides run on")
    parser.add_argument("--torch_compile", action="store_true", help="also time torch.compile(model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)  # internal: run one side
    parser.add_argument("--workdir", help=argparse.SUPPRESS)  # internal: where the jax side leaves weights, batches
    args, _ = parser.parse_with_overrides(argv)
    if args.turn < 1:
        parser.error(f"--turn={args.turn} must be at least 1")
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
    """The trainer's jitted step (olmo_jax.train.profiling.compile_step), compiled ahead of time."""

    def __init__(self, args: argparse.Namespace, config: Any) -> None:
        import jax

        from olmo_jax.train.profiling import compile_step, median_seconds, synthetic_batches

        self.jax, self.args, self.median_seconds = jax, args, median_seconds
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

    def head_matmuls(self) -> float:
        """Seconds for the output layer's three matmuls of one microbatch × the microbatches per step."""
        jax, a = self.jax, self.args
        rows = a.microbatch * a.seq_len
        keys = jax.random.split(jax.random.key(1), 3)
        h, w = jax.random.normal(keys[0], (rows, a.d_model)), jax.random.normal(keys[1], (a.vocab, a.d_model))
        g = jax.random.normal(keys[2], (rows, a.vocab))
        matmuls = jax.jit(lambda h, w, g: (h @ w.T, g @ w, g.T @ h))
        return self.median_seconds(lambda: jax.block_until_ready(matmuls(h, w, g))) * (a.batch // a.microbatch)


class TorchSide:
    """transformers' OlmoForCausalLM with torch.optim.AdamW, eager (or torch.compile'd)."""

    def __init__(self, args: argparse.Namespace, weights: Path, batches: list[Any], compiled: bool) -> None:
        import torch
        import transformers

        self.torch, self.args = torch, args
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

    def head_matmuls(self) -> float:
        from olmo_jax.train.profiling import median_seconds

        torch, a = self.torch, self.args
        rows = a.microbatch * a.seq_len
        h, w, g = torch.randn(rows, a.d_model), torch.randn(a.vocab, a.d_model), torch.randn(rows, a.vocab)
        return median_seconds(lambda: (h @ w.T, g @ w, g.T @ h)) * (a.batch // a.microbatch)


def reply(out: IO[str], message: dict[str, Any]) -> None:
    out.write(REPLY + json.dumps(message) + "\n")
    out.flush()


def serve(args: argparse.Namespace) -> int:
    """A worker: build one side, say it is ready, then run a step per line read ("done": report and exit)."""
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints goes to stderr, not into the replies
    from olmo_jax.config import load_config

    config = load_config(ROOT / "configs" / "tiny.py", overrides(args))
    workdir = Path(args.workdir)
    if args.worker == "jax":
        import numpy as np

        from olmo_jax.model.hf import save_hf

        side: Any = JaxSide(args, config)
        save_hf(config.model, side.state.params, workdir / "weights")  # torch starts from our initial weights
        np.save(workdir / "batches.npy", np.stack([np.asarray(b) for b in side.batches]))  # ... on our batches
    else:
        import numpy as np
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        transformers.utils.logging.disable_progress_bar()
        side = TorchSide(args, workdir / "weights", list(np.load(workdir / "batches.npy")),
                         compiled=args.worker == "torch_compile")
    reply(out, {"version": side.version, "params": config.model.num_params()})
    for line in sys.stdin:
        if line.strip() == "done":
            reply(out, {"losses": side.loss_history(), "head_matmuls": side.head_matmuls()})
            return 0
        start = time.perf_counter()
        side(int(line))
        reply(out, {"seconds": time.perf_counter() - start})
    return 1  # the parent went away


class Worker:
    """One side in its own process (`serve`), driven over its stdin and stdout."""

    def __init__(self, name: str, argv: list[str], workdir: str) -> None:
        self.name = name
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", name, "--workdir", workdir]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self._read()
        self.version, self.params = ready["version"], ready["params"]

    def __call__(self, i: int) -> float:
        """Run step i; the seconds it took, timed inside the worker."""
        return self._send(str(i))["seconds"]

    def finish(self) -> dict[str, Any]:
        result = self._send("done")
        self.process.wait()
        return result

    def _send(self, line: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        raise WorkerError(f"the {self.name} worker exited with status {self.process.wait()} (its error is above)")


def race(sides: dict[str, Any], warmup: int, steps: int, turn: int) -> dict[str, list[float]]:
    """Warm every side up, then let the sides take turns, rotating who goes first, so that drifts in machine load
    hit every side alike: in a turn a side takes one untimed step, then `turn` timed ones. The untimed step absorbs
    what the other side's turn left behind (module docstring), which a training run never pays. A side is called with
    the step index and returns the step's seconds."""
    taken = dict.fromkeys(sides, 0)  # steps each side has taken: its next batch and its step count

    def step(name: str) -> float:
        taken[name] += 1
        return sides[name](taken[name] - 1)

    for name in sides:
        for _ in range(warmup):
            step(name)
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for rotation in itertools.count():
        if min(len(t) for t in times.values()) >= steps:
            return times
        first = rotation % len(names)
        for name in names[first:] + names[:first]:
            step(name)  # settles after the other side's turn; not timed
            for _ in range(min(turn, steps - len(times[name]))):
                times[name].append(step(name))
    raise AssertionError("unreachable")


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.worker:
        return serve(args)
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cpus)  # the workers inherit it, before XLA sizes its thread pool from it
    forwarded = [a for a in argv if a != "--json"]
    names = ["jax", "torch"] + (["torch_compile"] if args.torch_compile else [])
    with tempfile.TemporaryDirectory(prefix="bench_vs_torch-") as workdir:
        sides: dict[str, Worker] = {}
        try:
            for name in names:  # jax first: it writes the weights and batches the others load
                sides[name] = Worker(name, forwarded, workdir)
            load_before = os.getloadavg()
            times = race(sides, args.warmup, args.steps, args.turn)
            finals = {name: worker.finish() for name, worker in sides.items()}
        finally:
            for worker in sides.values():
                worker.process.kill()
    tokens = args.batch * args.seq_len
    result: dict[str, Any] = {
        "model": {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads,
                  "seq_len": args.seq_len, "vocab": args.vocab, "params": sides["jax"].params},
        "batch": args.batch, "microbatch": args.microbatch, "tokens_per_step": tokens, "threads": args.threads,
        "cpus": cpus, "steps": args.steps, "warmup": args.warmup,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    for name, worker in sides.items():
        median = statistics.median(times[name])
        losses, head = finals[name]["losses"], finals[name]["head_matmuls"]
        result[name] = {"tokens_per_second": tokens / median, "step_time_median": median, "step_times": times[name],
                        "first_loss": losses[0], "loss": losses[-1], "version": worker.version,
                        "head_matmuls_seconds": head, "head_matmuls_share": head / median}
    for name in names[1:]:
        result[f"ratio_vs_{name}"] = result["jax"]["tokens_per_second"] / result[name]["tokens_per_second"]
    if args.json:
        print(json.dumps(result))
        return 0
    m = result["model"]
    print(f"OLMo d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, seq {m['seq_len']}, vocab "
          f"{m['vocab']} ({m['params']:,} params), fp32; batch {args.batch} in microbatches of {args.microbatch} "
          f"({tokens:,} tokens/step); {args.threads} threads; {args.warmup} warm-up + {args.steps} timed steps "
          f"per side, in turns of 1 untimed + {args.turn} timed, one process per side")
    for name in names:
        r = result[name]
        print(f"{name:>14}: {r['tokens_per_second']:9,.0f} tokens/s  median step {r['step_time_median']:.3f} s "
              f"(min {min(r['step_times']):.3f}, max {max(r['step_times']):.3f}); loss {r['first_loss']:.4f} → "
              f"{r['loss']:.4f}; {r['version']}")
    for name in names:
        r = result[name]
        print(f"{name:>14}: output layer's 3 matmuls alone {r['head_matmuls_seconds']:.3f} s "
              f"= {r['head_matmuls_share']:.0%} of its step")
    for name in names[1:]:
        print(f"ours / {name}: {result[f'ratio_vs_{name}']:.2f}×")
    print("load average (1, 5, 15 min) before: " + ", ".join(f"{x:.2f}" for x in load_before)
          + "; after: " + ", ".join(f"{x:.2f}" for x in result["load_average"]["after"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
