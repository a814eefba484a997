"""OLMo's tokenizer conventions on top of the `tokenizers` library (docs/olmo_facts.md §10).

EOS (id 50279 in OLMo-1B) is appended when encoding a document and never a BOS; padding is id 1. The default file is
`allenai_gpt-neox-olmo-dolma-v1_5.json`, in which 50279 is `<|endoftext|>` as in the published HF OLMo-1B; found
through the asset resolver (olmo_jax/data/assets.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import tokenizers

from olmo_jax.data import assets
from olmo_jax.errors import AssetError, ConfigError

# Named tokenizers shipped in ai2-olmo-eval; both have the same ids (they differ in the names of ids 0 and 50279).
KNOWN = {
    name: f"olmo_eval/tokenizers/{name}.json"
    for name in ("allenai_gpt-neox-olmo-dolma-v1_5", "allenai_eleuther-ai-gpt-neox-20b-pii-special")
}
DEFAULT = "allenai_gpt-neox-olmo-dolma-v1_5"
# The published HF OLMo-1B ships the dolma-v1_5 file as tokenizer.json.
_HUB = {DEFAULT: ("allenai/OLMo-1B-hf", "tokenizer.json")}


def tokenizer_path(identifier: str | Path | None = None) -> Path:
    """A tokenizer.json path, an HF model directory holding one, or a KNOWN name (default: DEFAULT) → a local file."""
    identifier = str(identifier or DEFAULT)
    if identifier in KNOWN:
        return assets.resolve(KNOWN[identifier], hub=_HUB.get(identifier))
    path = Path(identifier).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise AssetError(
            f"Tokenizer {identifier!r} is neither a tokenizer.json file, a directory holding one, nor one of the "
            f"known names {sorted(KNOWN)}."
        )
    return path


class Tokenizer:
    """`tokenizers.Tokenizer` with OLMo's eos/pad ids and EOS-appending `encode`."""

    def __init__(self, path: str | Path, eos_token_id: int = 50279, pad_token_id: int = 1) -> None:
        self.path = Path(path)
        self.base = tokenizers.Tokenizer.from_file(str(self.path))
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        for name, token_id in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
            if not 0 <= token_id < self.vocab_size:
                raise ConfigError(f"{name}={token_id} is outside the vocabulary of tokenizer {self.path} "
                                  f"({self.vocab_size} ids): is it the model's tokenizer? Set model.{name} or pick "
                                  "another tokenizer (--config.tokenizer, --tokenizer).")

    @classmethod
    def load(cls, identifier: str | Path | None = None, eos_token_id: int = 50279, pad_token_id: int = 1) -> Tokenizer:
        return cls(tokenizer_path(identifier), eos_token_id, pad_token_id)

    @property
    def vocab_size(self) -> int:
        return self.base.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with add_special_tokens, EOS is appended unless already last (OLMo's encode)."""
        return self.encode_batch([text], add_special_tokens)[0]

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        out = [e.ids for e in self.base.encode_batch(list(texts), add_special_tokens=False)]
        if add_special_tokens:
            for ids in out:
                if not ids or ids[-1] != self.eos_token_id:
                    ids.append(self.eos_token_id)
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.base.decode(list(ids), skip_special_tokens=skip_special_tokens)
