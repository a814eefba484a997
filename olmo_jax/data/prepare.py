"""Text → OLMo token files, as OLMo's scripts/prepare_memmap_dataset.py makes them (docs/olmo_facts.md §5.1–5.2).

Every document is tokenized with EOS appended (no BOS) and the results are concatenated into one headerless raw array
of token ids (uint16 when the vocabulary fits, else uint32); empty documents are skipped. Inputs are JSONL files,
optionally gzipped, with a `text` field per line (Dolma's format), or plain text files holding one document each, or
directories of them (walked recursively, sorted). Input files are tokenized in parallel processes, each streaming its
documents in chunks into a shard on disk, and the shards are appended in input order: memory stays flat whatever the
input size and the output does not depend on the number of workers. The output is written under a temporary name
and given its name when complete (never over an existing file: an output that exists is an error), then a JSON
manifest is written beside it as `<output>.json`.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from olmo_jax.data.token_files import manifest_path
from olmo_jax.data.tokenizer import Tokenizer
from olmo_jax.errors import PrepareError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")
TEXT_SUFFIXES = (".txt",)
_CHUNK_CHARS = 8_000_000  # characters tokenized per encode_batch call: bounds memory, amortises the call


def find_inputs(inputs: Sequence[str | Path], suffixes: Sequence[str] = JSONL_SUFFIXES + TEXT_SUFFIXES) -> list[Path]:
    """Files named in `inputs`, in the given order; a directory contributes its files ending in one of `suffixes`,
    found recursively and sorted by path."""
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(tuple(suffixes)))
            if not files:
                raise PrepareError(f"Directory {path} holds no files ending in {list(suffixes)}.")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise PrepareError(f"Input {path} does not exist.")
    if not found:
        raise PrepareError("No inputs given: name JSONL(.gz) or text files, or directories of them.")
    return found


def _documents(path: Path, text_field: str, encoding_errors: str) -> Iterator[str]:
    if not path.name.endswith(JSONL_SUFFIXES):
        try:
            yield path.read_text(encoding="utf-8", errors=encoding_errors)
        except UnicodeDecodeError as e:
            raise PrepareError(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); fix the file or pass "
                               "encoding_errors='replace' (--encoding-errors=replace).") from None
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors=encoding_errors) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PrepareError(f"{path}:{lineno}: not a JSON object ({e.msg}); JSONL inputs hold one JSON "
                                       "object per line.") from None
                text = record.get(text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise PrepareError(f"{path}:{lineno}: no string field {text_field!r} (Dolma's format: one JSON "
                                       f"object per line with a {text_field!r} field).")
                yield text
        except UnicodeDecodeError as e:
            raise PrepareError(f"{path}:{lineno + 1}: not UTF-8 ({e.reason}); fix the file or pass "
                               "encoding_errors='replace' (--encoding-errors=replace).") from None
        except (OSError, EOFError) as e:  # e.g. a truncated or corrupt gzip stream
            raise PrepareError(f"{path}:{lineno + 1}: cannot be read ({e}).") from None


_TOKENIZERS: dict[tuple[str, int, int], Tokenizer] = {}


def _tokenize_file(job: tuple[Path, Path, tuple[str, int, int], str, str, str]) -> tuple[int, int, int]:
    """One input file → a shard of token ids; returns (documents, skipped empty documents, tokens)."""
    path, shard, tokenizer_key, dtype, text_field, encoding_errors = job
    tokenizer = _TOKENIZERS.get(tokenizer_key)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[tokenizer_key] = Tokenizer(*tokenizer_key)
    documents = skipped = tokens = 0
    with open(shard, "wb") as out:

        def flush(texts: list[str]) -> int:
            ids = tokenizer.encode_batch(texts)
            flat = np.fromiter((i for doc in ids for i in doc), dtype, count=sum(map(len, ids)))
            out.write(flat.tobytes())
            return flat.size

        chunk: list[str] = []
        chars = 0
        for text in _documents(path, text_field, encoding_errors):
            if not text:  # OLMo's prepare script skips empty documents
                skipped += 1
                continue
            chunk.append(text)
            chars += len(text)
            documents += 1
            if chars >= _CHUNK_CHARS:
                tokens += flush(chunk)
                chunk, chars = [], 0
        if chunk:
            tokens += flush(chunk)
    return documents, skipped, tokens


def _init_worker() -> None:
    # Parallelism comes from the worker processes; one tokenizer thread each avoids oversubscribing the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def prepare(inputs: Sequence[str | Path] | str | Path, output: str | Path,
            tokenizer: Tokenizer | str | Path | None = None, *, dtype: str | None = None,
            workers: int | None = None, suffixes: Sequence[str] = JSONL_SUFFIXES + TEXT_SUFFIXES,
            text_field: str = "text", encoding_errors: str = "strict", progress: bool = True) -> dict:
    """Tokenize `inputs` into the OLMo token file `output` and write its manifest (`manifest_path(output)`).

    tokenizer: a Tokenizer, or what Tokenizer.load takes (a known name, a tokenizer.json, None for OLMo's default).
    dtype: 'uint16' or 'uint32'; default the smallest that holds every id of the vocabulary.
    workers: processes tokenizing files in parallel (default: one per core, at most one per file).
    suffixes: which files of an input directory to read; files not ending in a JSONL suffix are plain text.
    encoding_errors: 'strict' (a file that is not UTF-8 is an error) or 'replace' (bad bytes become U+FFFD).
    Returns the manifest: inputs (with documents and tokens each), documents, tokens, dtype, tokenizer, sha256.
    """
    files = find_inputs(inputs, suffixes)
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.load(tokenizer)
    fits = "uint16" if tokenizer.vocab_size <= 2**16 else "uint32"
    dtype = dtype or fits
    if dtype not in ("uint16", "uint32"):
        raise PrepareError(f"dtype={dtype!r} must be 'uint16' or 'uint32'.")
    if dtype == "uint16" and fits != "uint16":
        raise PrepareError(f"The vocabulary of {tokenizer.vocab_size} ids does not fit uint16; use dtype='uint32'.")
    if encoding_errors not in ("strict", "replace"):
        raise PrepareError(f"encoding_errors={encoding_errors!r} must be 'strict' or 'replace'.")
    workers = max(1, min(workers or os.cpu_count() or 1, len(files)))
    output = Path(output)
    for existing in (output, manifest_path(output)):
        if existing.exists():
            raise PrepareError(f"{existing} already exists; olmo_jax never replaces a file: remove it or choose "
                               "another output.")
    output.parent.mkdir(parents=True, exist_ok=True)
    key = (str(tokenizer.path.resolve()), tokenizer.eos_token_id, tokenizer.pad_token_id)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.staging-"))  # same filesystem
    try:
        jobs = [(path, staging / f"{i:08d}", key, dtype, text_field, encoding_errors) for i, path in enumerate(files)]
        partial = staging / "output"
        digest = hashlib.sha256()
        counts = [None] * len(files)
        with open(partial, "wb") as out, _progress(sum(p.stat().st_size for p in files), progress) as bar:
            appended = 0

            def finish(i: int, result: tuple[int, int, int]) -> None:
                nonlocal appended
                counts[i] = result
                bar.update(files[i].stat().st_size)
                while appended < len(files) and counts[appended] is not None:  # append shards in input order
                    shard = jobs[appended][1]
                    with open(shard, "rb") as f:
                        while block := f.read(1 << 24):
                            out.write(block)
                            digest.update(block)
                    shard.unlink()
                    appended += 1

            if workers == 1:
                for i, job in enumerate(jobs):
                    finish(i, _tokenize_file(job))
            else:
                context = multiprocessing.get_context("spawn")  # no fork of a process that may hold JAX threads
                with concurrent.futures.ProcessPoolExecutor(workers, context, initializer=_init_worker) as pool:
                    futures = {pool.submit(_tokenize_file, job): i for i, job in enumerate(jobs)}
                    try:
                        for future in concurrent.futures.as_completed(futures):
                            finish(futures[future], future.result())
                    except BaseException:
                        for future in futures:
                            future.cancel()
                        raise
        documents = sum(c[0] for c in counts)
        tokens = sum(c[2] for c in counts)
        if not documents:
            raise PrepareError(f"No non-empty documents in {len(files)} input file(s): {files[0]} ...")
        manifest = {
            "output": str(output),
            "format": "headerless raw token ids, read with np.memmap (not np.load); docs/olmo_facts.md §5.1",
            "dtype": dtype,
            "documents": documents,
            "skipped_empty_documents": sum(c[1] for c in counts),
            "tokens": tokens,
            "sha256": digest.hexdigest(),
            "tokenizer": {"path": key[0], "vocab_size": tokenizer.vocab_size, "eos_token_id": key[1],
                          "pad_token_id": key[2]},
            "text_field": text_field,
            "encoding_errors": encoding_errors,
            "inputs": [{"path": str(p), "documents": c[0], "tokens": c[2]} for p, c in zip(files, counts, strict=True)],
        }
        manifest_tmp = staging / "manifest.json"
        manifest_tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        _publish(partial, output)
        _publish(manifest_tmp, manifest_path(output))
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(done: Path, final: Path) -> None:
    """Give a finished file its final name, atomically and never over an existing file (a hard link fails where the
    name is taken, unlike a rename); where the file system has no hard links, a rename after checking."""
    try:
        os.link(done, final)
    except FileExistsError:
        raise PrepareError(f"{final} appeared while it was being written; olmo_jax never replaces a file, so the "
                           f"result is left unpublished. Remove {final} and run again.") from None
    except OSError:
        if final.exists():
            raise PrepareError(f"{final} already exists; olmo_jax never replaces a file.") from None
        os.replace(done, final)
        return
    done.unlink()


def _progress(total_bytes: int, enabled: bool) -> tqdm:
    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not enabled,
                file=sys.stderr)
