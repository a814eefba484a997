"""Show the training instances of one batch, as OLMo's scripts/inspect_train_data.py does; compute a run's batch
ledger, compare two ledgers, or write OLMo's global_indices.npy, all from a config and without training.

    python tools/inspect_data.py --config=configs/1b.py --step 0 [--rows 4] [--no-text] [--config.data.paths=FILE ...]
    python tools/inspect_data.py --config=configs/olmo_yaml.py:OLMo-1B.yaml --step 0 --no-text
    python tools/inspect_data.py --config=configs/1b.py --ledger 1:1000 [--output ledger.jsonl]
    python tools/inspect_data.py --compare-ledgers runs/a/data_ledger.jsonl runs/b/data_ledger.jsonl
    python tools/inspect_data.py --config=configs/1b.py --write-global-indices global_indices.npy [--epoch 0]
    python tools/inspect_data.py --config=configs/1b.py --global-indices FILE_OR_URL --step 0

`--step N` is the 0-based batch index used by olmo_jax: batch N feeds the (N+1)-th optimizer update, i.e. OLMo's
global_step N+1. Rows are listed in global order; each shows its global instance index, where it lives (file and
token range), the data-parallel device and micro-step that receive it, and (unless --no-text, which reads no
tokens at all) its first token ids and its decoded text. A config from an OLMo YAML (configs/olmo_yaml.py) whose
data.paths are URLs costs one size request per file; only the shown rows' byte ranges are read.
`--ledger A:B` prints the ledger records of OLMo's global steps A … B (olmo_jax/data/ledger.py), the same as a run
with data.ledger writes; `--compare-ledgers` prints the first step whose batches differ (exit status 1) or that
there is none. `--global-indices` reads an existing OLMo global_indices.npy (one epoch's order, `--epoch`) instead
of computing the order.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from olmo_jax import cli
from olmo_jax.config import load_config
from olmo_jax.data.ledger import first_difference, ledger, read_ledger
from olmo_jax.data.order import Batches, row_positions, write_global_indices
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.data.tokenizer import Tokenizer
from olmo_jax.errors import DataError, UsageError


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/inspect_data.py", description=__doc__, takes_config=True,
                                config_default="configs/1b.py")
    parser.add_argument("--step", type=int, help="0-based batch index (OLMo global_step − 1) to show")
    parser.add_argument("--rows", type=int, help="how many rows to show (default: the whole global batch)")
    parser.add_argument("--ids", type=int, default=16, help="first token ids shown per row")
    parser.add_argument("--chars", type=int, default=200, help="decoded characters shown per row (0: all)")
    parser.add_argument("--no-text", action="store_true", help="indices and token ranges only: read no tokens")
    parser.add_argument("--dp-world-size", type=int, default=1, help="data-parallel devices (drop_last, layout)")
    parser.add_argument("--ledger", metavar="A:B", help="print the ledger records of OLMo global steps A … B")
    parser.add_argument("--output", help="with --ledger: write the records to this new file instead")
    parser.add_argument("--compare-ledgers", nargs=2, metavar=("A", "B"), help="the first step two ledgers differ")
    parser.add_argument("--write-global-indices", metavar="FILE", help="write OLMo's global_indices.npy (new file)")
    parser.add_argument("--global-indices", metavar="FILE_OR_URL", help="an OLMo global_indices.npy to use")
    parser.add_argument("--epoch", type=int, default=0, help="the epoch of --write-/--global-indices (default 0)")
    return parser


def compare(a: str, b: str) -> int:
    step, summary = first_difference(read_ledger(a), read_ledger(b))
    print(f"first difference at {summary}" if step is not None else summary)
    return 1 if step is not None else 0


def new_file(path: str) -> Path:
    out = Path(path)
    if out.exists():
        raise UsageError(f"{out} exists; olmo_jax never replaces a file: give a new path.")
    return out


def steps_of(text: str) -> tuple[int, int]:
    """"A:B" (OLMo global steps, inclusive) → (first, last)."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--ledger {text!r}: give OLMo global steps as FIRST:LAST, e.g. 1:1000.")
    first, last = (int(p) for p in parts)
    if not 1 <= first <= last:
        raise UsageError(f"--ledger {text!r}: steps start at 1 and FIRST must not exceed LAST.")
    return first, last


def read_order(source: str, expected: int, epoch: int) -> np.ndarray:
    """An OLMo global_indices.npy (raw uint32; a path or URL, fetched once into the cache) of the config's length."""
    from olmo_jax.data.assets import cache_dir
    from olmo_jax.data.config import is_url
    from olmo_jax.data.download import download

    path = download(source, cache_dir() / "global-indices" / source.replace("://", "/").replace("/", "_")) if (
        is_url(source)) else Path(source)
    if not path.is_file():
        raise DataError(f"--global-indices {source} does not exist.")
    size = path.stat().st_size
    if size % 4:
        raise DataError(f"--global-indices {source} has {size:,} bytes, not whole uint32 indices; is it OLMo's "
                        "global_indices.npy (raw uint32, no header)?")
    if size // 4 != expected:
        raise DataError(f"--global-indices {source} holds {size // 4:,} indices, but this config's epoch {epoch} has "
                        f"{expected:,} (its files, sequence length and world size decide it); it was written for "
                        "other data or another world size.")
    return np.fromfile(path, np.uint32)


def run(argv: list[str] | None = None) -> int:
    p = parser()
    args, overrides = p.parse_with_overrides(argv)
    if args.dp_world_size < 1:
        p.error(f"--dp-world-size={args.dp_world_size} must be at least 1")
    if args.compare_ledgers:
        return compare(*args.compare_ledgers)
    modes = [args.step is not None, args.ledger is not None, args.write_global_indices is not None]
    if sum(modes) != 1:
        p.error("give one of --step, --ledger, --write-global-indices or --compare-ledgers")
    steps = steps_of(args.ledger) if args.ledger else None  # a malformed range fails before any data is read
    config = load_config(args.config, overrides)
    m, W = config.model, args.dp_world_size
    G = config.global_train_batch_size
    if G % (W * config.device_train_microbatch_size):
        raise DataError(f"global_train_batch_size={G} is not a multiple of dp_world_size × "
                        f"device_train_microbatch_size = {W} × {config.device_train_microbatch_size}.")
    files = TokenFiles(config.data.paths, config.data.memmap_dtype, m.max_sequence_length,
                       remote=config.data.remote_options())
    batches = Batches(files, config.data_seed, G, G // (W * config.device_train_microbatch_size), W,
                      vocab_size=m.vocab_size)
    if args.global_indices:
        order = read_order(args.global_indices, len(batches.epoch_order(args.epoch)), args.epoch)
        batches.set_epoch_order(args.epoch, order)
        if batches.epoch_of(args.step or 0) != args.epoch:
            raise UsageError(f"--step {args.step} is in epoch {batches.epoch_of(args.step)}, but --global-indices "
                             f"holds epoch {args.epoch} (--epoch).")
    if args.write_global_indices:
        out = write_global_indices(new_file(args.write_global_indices), batches.epoch_order(args.epoch))
        print(f"wrote {out}: epoch {args.epoch}'s order of {files.num_instances:,} instances (seed "
              f"{batches.seed + args.epoch}), {out.stat().st_size:,} bytes of uint32")
        return 0
    if steps is not None:
        first, last = steps
        start = time.perf_counter()
        records = [json.dumps(r) for r in ledger(batches, first - 1, last)]
        seconds = time.perf_counter() - start
        if args.output:
            new_file(args.output).write_text("\n".join(records) + "\n")
        else:
            print("\n".join(records))
        print(f"{len(records):,} steps in {seconds:.2f} s ({len(records) / seconds:,.0f} steps/s)", file=sys.stderr)
        return 0
    ids = batches.instance_ids(args.step)
    tokenizer = tokens = None
    if not args.no_text:
        tokenizer = Tokenizer.load(config.tokenizer, m.eos_token_id, m.pad_token_id)
        tokens = batches.batch_at(args.step)
    positions = row_positions(G, batches.grad_accum, W)
    rows_per_device = G // (W * batches.grad_accum)
    epoch = batches.epoch_of(args.step)
    print(f"batch {args.step} (OLMo global_step {args.step + 1}), epoch {epoch} (shuffle seed {batches.seed + epoch}):"
          f" {G} instances of {m.max_sequence_length} tokens from {files.num_instances} in {len(files.paths)} file(s)")
    for position in range(min(args.rows or G, G)):
        k, j = (int(x[0]) for x in np.nonzero(positions == position))
        instance = int(ids[k, j])
        f, offset = files.locate(instance)
        end = offset + m.max_sequence_length
        print(f"[{position}] instance {instance} = {files.paths[f]} @ token {offset} (to {end}) "
              f"(device {j // rows_per_device}, micro-step {k})")
        if tokens is None:
            continue
        row = tokens[k, j]
        text = tokenizer.decode(row.tolist(), skip_special_tokens=False)
        if args.chars:
            text = text[:args.chars]
        print(f"    ids {row[:args.ids].tolist()}")
        print(f"    text {json.dumps(text, ensure_ascii=False)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
