"""Tokenize text into an OLMo token file (docs/olmo_facts.md §5.1–5.2), with a JSON manifest beside it.

    python tools/prepare_data.py INPUT [INPUT ...] --output data/mydata.npy [--tokenizer NAME_OR_FILE] [--workers N]

INPUT: JSONL or JSONL.gz files with a `text` field per line (Dolma's format), plain text files (one document each),
or directories of them. Every document gets EOS appended; the output is a headerless uint16 array (uint32 for
vocabularies above 65,536) to list in `data.paths`; the manifest is written to `<output>.json`.
"""

from __future__ import annotations

import sys

from olmo_jax import cli
from olmo_jax.data.prepare import JSONL_SUFFIXES, TEXT_SUFFIXES, manifest_path, prepare
from olmo_jax.data.tokenizer import DEFAULT, Tokenizer


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/prepare_data.py", description=__doc__)
    parser.add_argument("inputs", nargs="+", help="JSONL(.gz) or text files, or directories of them")
    parser.add_argument("--output", required=True, help="token file to write, e.g. data/mydata.npy")
    parser.add_argument("--tokenizer", default=DEFAULT, help=f"known name or tokenizer.json (default: {DEFAULT})")
    parser.add_argument("--eos-token-id", type=int, default=50279, help="EOS appended to every document")
    parser.add_argument("--dtype", choices=["uint16", "uint32"], help="default: uint16 when the vocabulary fits")
    parser.add_argument("--workers", type=int, help="parallel processes (default: one per core)")
    parser.add_argument("--suffixes", nargs="+", default=list(JSONL_SUFFIXES + TEXT_SUFFIXES),
                        help="file endings read from input directories (default: %(default)s)")
    parser.add_argument("--text-field", default="text", help="JSON field holding a document's text")
    parser.add_argument("--encoding-errors", choices=["strict", "replace"], default="strict",
                        help="what to do with bytes that are not UTF-8 (default: strict, an error)")
    return parser


def run(argv: list[str] | None = None) -> int:
    args, _ = parser().parse_with_overrides(argv)
    tokenizer = Tokenizer.load(args.tokenizer, eos_token_id=args.eos_token_id)
    manifest = prepare(args.inputs, args.output, tokenizer, dtype=args.dtype, workers=args.workers,
                       suffixes=args.suffixes, text_field=args.text_field, encoding_errors=args.encoding_errors)
    print(f"wrote {args.output}: {manifest['tokens']:,} tokens ({manifest['dtype']}) from {manifest['documents']:,} "
          f"documents in {len(manifest['inputs'])} file(s); manifest {manifest_path(args.output)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
