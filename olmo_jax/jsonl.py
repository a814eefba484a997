"""Step-keyed JSON-lines files a run appends to (`metrics.jsonl`, `data_ledger.jsonl`): reading them despite a torn
last line, and cutting them back to a step when a run resumes, so every step is recorded once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def records(text: str) -> list[dict[str, Any]]:
    """The records of a file's text that have an int `step`; a line that is not a whole record (the torn last line
    a full disk or a power cut leaves) is skipped."""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            out.append(record)
    return out


def keep_through(path: Path, step: int) -> None:
    """Rewrite `path` (if it exists) without the records after `step` (what a killed predecessor wrote after the
    checkpoint its successor resumes from), through a temporary file and a rename."""
    if not path.exists():
        return
    kept = [json.dumps(r) + "\n" for r in records(path.read_text()) if r["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
