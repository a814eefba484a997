"""Text → OLMo token files: the round trip through the loader, determinism, the manifest, and input errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_python

from olmo_jax.data import prepare as prepare_module
from olmo_jax.data.order import Batches
from olmo_jax.data.prepare import manifest_path, prepare
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.data.tokenizer import Tokenizer
from olmo_jax.errors import PrepareError

DOCS = [
    "Language modeling is the task of predicting the next token.",
    "OLMo is an open language model.",
    "",  # skipped, as OLMo's prepare script does
    "The task of modeling language is open.",
]


@pytest.fixture
def tokenizer(tokenizer_json: Path) -> Tokenizer:
    return Tokenizer(tokenizer_json, eos_token_id=0)


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[str]]:
    """A directory with JSONL, JSONL.gz and text files; returns it and its documents in the order they are read."""
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    (root / "a.jsonl").write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(DOCS)) + "\n\n")
    with gzip.open(root / "b" / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": t + " (gz)"}) + "\n" for t in DOCS[:2])
    (root / "b" / "d.txt").write_text("A plain text file is one document.\nEven with two lines.")
    (root / "ignored.csv").write_text("not,read")
    docs = [t for t in DOCS if t] + [t + " (gz)" for t in DOCS[:2]] + ["A plain text file is one document.\nEven "
                                                                      "with two lines."]
    return root, docs


def test_round_trip_reproduces_the_documents_token_ids(tmp_path: Path, corpus, tokenizer: Tokenizer) -> None:
    root, docs = corpus
    out = tmp_path / "out" / "tokens.npy"
    manifest = prepare([root], out, tokenizer, workers=1, progress=False)
    expected = np.concatenate([tokenizer.encode(d) for d in docs])
    assert (expected == 0).sum() == len(docs)  # one EOS per document, no BOS
    stored = np.memmap(out, dtype=np.uint16, mode="r")
    np.testing.assert_array_equal(stored, expected)
    assert manifest == json.loads(manifest_path(out).read_text())
    assert (manifest["dtype"], manifest["documents"], manifest["tokens"]) == ("uint16", 6, expected.size)
    assert manifest["skipped_empty_documents"] == 1
    assert [Path(i["path"]).name for i in manifest["inputs"]] == ["a.jsonl", "c.jsonl.gz", "d.txt"]
    assert manifest["tokenizer"]["eos_token_id"] == 0
    # Through the loader: instances of T tokens in order, the leftover tail dropped.
    T = 8
    files = TokenFiles([out], "uint16", T)
    assert files.num_instances == expected.size // T
    np.testing.assert_array_equal(files.read(np.arange(files.num_instances)), expected[:files.num_instances * T]
                                  .reshape(-1, T))
    batches = Batches(files, seed=6198, global_batch_size=2, grad_accum=1, vocab_size=tokenizer.vocab_size)
    ids = batches.instance_ids(0)
    np.testing.assert_array_equal(batches.batch_at(0), expected[(ids[..., None] * T + np.arange(T))])
    assert sorted(p.name for p in out.parent.iterdir()) == ["tokens.npy", "tokens.npy.json"]  # no staging left


def test_output_does_not_depend_on_workers_or_chunking(tmp_path: Path, corpus, tokenizer: Tokenizer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = corpus
    one = prepare([root], tmp_path / "one.npy", tokenizer, workers=1, progress=False)
    two = prepare([root], tmp_path / "two.npy", tokenizer, workers=2, progress=False)
    monkeypatch.setattr(prepare_module, "_CHUNK_CHARS", 10)  # every document its own encode call
    chunked = prepare([root], tmp_path / "chunked.npy", tokenizer, workers=1, progress=False)
    assert one["sha256"] == two["sha256"] == chunked["sha256"]
    assert (tmp_path / "one.npy").read_bytes() == (tmp_path / "two.npy").read_bytes()


def test_large_vocabularies_get_uint32(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as BaseTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {"<eos>": 0, "<pad>": 1} | {f"w{i}": i for i in range(2, 70_000)}
    base = BaseTokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    base.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path / "big.json"
    base.save(str(path))
    tokenizer = Tokenizer(path, eos_token_id=0)
    (tmp_path / "doc.txt").write_text("w5 w69999 w65536")
    manifest = prepare([tmp_path / "doc.txt"], tmp_path / "out.npy", tokenizer, progress=False)
    assert manifest["dtype"] == "uint32"
    np.testing.assert_array_equal(np.memmap(tmp_path / "out.npy", np.uint32, mode="r"), [5, 69999, 65536, 0])
    with pytest.raises(PrepareError, match="70000 ids does not fit uint16"):
        prepare([tmp_path / "doc.txt"], tmp_path / "x.npy", tokenizer, dtype="uint16", progress=False)


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "fine"}\n{"text": "broken\n', r"bad\.jsonl:2: not a JSON object"),
    ('{"text": "fine"}\n{"body": "no text"}\n', r"bad\.jsonl:2: no string field 'text'"),
    ("[1, 2]\n", r"bad\.jsonl:1: no string field 'text'"),
])
def test_bad_jsonl_names_file_and_line(tmp_path: Path, tokenizer: Tokenizer, content: str, message: str) -> None:
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(PrepareError, match=message):
        prepare([tmp_path / "bad.jsonl"], tmp_path / "out.npy", tokenizer, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # nothing half-written


def test_input_errors(tmp_path: Path, tokenizer: Tokenizer) -> None:
    out = tmp_path / "out.npy"
    with pytest.raises(PrepareError, match=r"missing\.jsonl does not exist"):
        prepare([tmp_path / "missing.jsonl"], out, tokenizer)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(PrepareError, match="holds no files ending in"):
        prepare([tmp_path / "empty"], out, tokenizer)
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(PrepareError, match="No non-empty documents"):
        prepare([tmp_path / "blank.jsonl"], out, tokenizer, progress=False)
    assert not out.exists()


def test_text_that_is_not_utf8(tmp_path: Path, tokenizer: Tokenizer) -> None:
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(PrepareError, match=r"latin1\.txt is not UTF-8 .*encoding_errors='replace'"):
        prepare([tmp_path / "latin1.txt"], tmp_path / "out.npy", tokenizer, progress=False)
    manifest = prepare([tmp_path / "latin1.txt"], tmp_path / "out.npy", tokenizer, encoding_errors="replace",
                       progress=False)
    assert manifest["tokens"] == len(tokenizer.encode("caf\ufffd"))


def test_command_line(tmp_path: Path, corpus, tokenizer_json: Path) -> None:
    root, docs = corpus
    out = tmp_path / "cli.npy"
    result = run_python("tools/prepare_data.py", str(root), "--output", str(out), "--tokenizer", str(tokenizer_json),
                        "--eos-token-id", "0", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}: " in result.stdout and f"from {len(docs)} documents in 3 file(s)" in result.stdout
    result = run_python("tools/prepare_data.py", str(tmp_path / "nope"), "--output", str(out), "--tokenizer",
                        str(tokenizer_json), "--eos-token-id", "0")
    assert result.returncode == 1 and "error: Input" in result.stderr and "does not exist" in result.stderr


def test_an_existing_output_is_never_replaced(tmp_path: Path, corpus, tokenizer: Tokenizer) -> None:
    out = tmp_path / "data.npy"
    out.write_bytes(b"the user's own file")
    with pytest.raises(PrepareError, match=r"data\.npy already exists; olmo_jax never replaces a file"):
        prepare(corpus[0], out, tokenizer, progress=False)
    assert out.read_bytes() == b"the user's own file" and not (tmp_path / "data.npy.json").exists()
    fresh = tmp_path / "fresh.npy"
    (tmp_path / "fresh.npy.json").write_text("{}")  # a manifest in the way counts too
    with pytest.raises(PrepareError, match=r"fresh\.npy\.json already exists"):
        prepare(corpus[0], fresh, tokenizer, progress=False)
    assert not fresh.exists() and not list(tmp_path.glob(".fresh.npy.staging-*"))
