"""Show the training instances of one batch, as OLMo's scripts/inspect_train_data.py does.

    python tools/inspect_data.py --config=configs/1b.py --step 0 [--rows 4] [--config.data.paths=FILE ...]

`--step N` is the 0-based batch index used by olmo_jax: batch N feeds the (N+1)-th optimizer update, i.e. OLMo's
global_step N+1. Rows are listed in global order; each shows its global instance index, where it lives (file and
token offset), the data-parallel device and micro-step that receive it, its first token ids and its decoded text.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from olmo_jax import cli
from olmo_jax.config import load_config
from olmo_jax.data.order import Batches, row_positions
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.data.tokenizer import Tokenizer
from olmo_jax.errors import DataError


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/inspect_data.py", description=__doc__, takes_config=True)
    parser.add_argument("--step", type=int, required=True, help="0-based batch index (OLMo global_step − 1)")
    parser.add_argument("--rows", type=int, help="how many rows to show (default: the whole global batch)")
    parser.add_argument("--ids", type=int, default=16, help="first token ids shown per row")
    parser.add_argument("--chars", type=int, default=200, help="decoded characters shown per row (0: all)")
    parser.add_argument("--dp-world-size", type=int, default=1, help="data-parallel devices (drop_last, layout)")
    return parser


def run(argv: list[str] | None = None) -> int:
    p = parser()
    args, overrides = p.parse_with_overrides(argv)
    if args.dp_world_size < 1:
        p.error(f"--dp-world-size={args.dp_world_size} must be at least 1")
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
    tokenizer = Tokenizer.load(config.tokenizer, m.eos_token_id, m.pad_token_id)
    ids, tokens = batches.instance_ids(args.step), batches.batch_at(args.step)
    positions = row_positions(G, batches.grad_accum, W)
    rows_per_device = G // (W * batches.grad_accum)
    epoch = batches.epoch_of(args.step)
    print(f"batch {args.step} (OLMo global_step {args.step + 1}), epoch {epoch} (shuffle seed {batches.seed + epoch}):"
          f" {G} instances of {m.max_sequence_length} tokens from {files.num_instances} in {len(files.paths)} file(s)")
    for position in range(min(args.rows or G, G)):
        k, j = (int(x[0]) for x in np.nonzero(positions == position))
        instance = int(ids[k, j])
        f, offset = files.locate(instance)
        row = tokens[k, j]
        text = tokenizer.decode(row.tolist(), skip_special_tokens=False)
        if args.chars:
            text = text[:args.chars]
        print(f"[{position}] instance {instance} = {files.paths[f]} @ token {offset} "
              f"(device {j // rows_per_device}, micro-step {k})")
        print(f"    ids {row[:args.ids].tolist()}")
        print(f"    text {json.dumps(text, ensure_ascii=False)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
