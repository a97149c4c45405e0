"""Evaluation datasets as typed records, read from ``../shared/data`` or official releases."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

SQUAD_V2_SUBSET = Path("squad_v2") / "dev-v2.0-subset.json"
HOTPOTQA_SUBSET = Path("hotpotqa") / "dev-distractor-400.jsonl"
ROUTELLM_GSM8K = Path("routellm") / "gsm8k_responses.csv"
DEFAULT_DATA_DIR = Path("../shared/data")


class DatasetError(ValueError):
    """A dataset file is missing or not in the expected format."""


@dataclass(frozen=True)
class QARecord:
    """One question with its context documents and gold answers (empty when unanswerable)."""

    id: str
    question: str
    context: tuple[str, ...]
    answers: tuple[str, ...]
    dataset: str
    group: str = ""  # what held-out splits keep together: the SQuAD article, the HotpotQA question

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def data_dir(explicit: str | Path | None = None) -> Path:
    """``explicit``, else ``CASCADE_DATA_DIR``, else ``../shared/data``."""
    return Path(explicit or os.environ.get("CASCADE_DATA_DIR") or DEFAULT_DATA_DIR)


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist (set --data-dir or CASCADE_DATA_DIR)") from None
    except orjson.JSONDecodeError as error:
        raise DatasetError(f"dataset file {path} is not valid JSON: {error}") from None


def _squad_questions(document: Any, path: Path) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(article title, question, paragraph) for every question of a SQuAD document."""
    try:
        for number, article in enumerate(document["data"]):
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    yield str(article.get("title", f"article-{number}")), qa, paragraph["context"]
    except (KeyError, TypeError) as error:
        raise DatasetError(f"{path} is not in SQuAD's layout (data[].paragraphs[].qas[]): missing {error}") from None


def load_squad(path: str | Path | None = None, *, unanswerable: bool = True,
               limit: int | None = None) -> list[QARecord]:
    """SQuAD questions from an official SQuAD 1.1 or 2.0 JSON file (default: the 2.0 subset).

    With ``unanswerable=False`` only answerable questions are kept: SQuAD 1.1-style extractive QA.
    """
    file = Path(path) if path is not None else data_dir() / SQUAD_V2_SUBSET
    if file.is_dir():
        file = file / SQUAD_V2_SUBSET
    records: list[QARecord] = []
    for title, qa, context in _squad_questions(_read_json(file), file):
        try:
            impossible = bool(qa.get("is_impossible", False))
            answers = () if impossible else tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
            record = QARecord(id=str(qa["id"]), question=qa["question"], context=(context,), answers=answers,
                              dataset="squad_v2" if unanswerable else "squad", group=title)
        except (KeyError, TypeError) as error:
            raise DatasetError(f"{file}: question {qa.get('id', '?')} is malformed: missing {error}") from None
        if impossible and not unanswerable:
            continue
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    return records


def _hotpot_record(item: dict[str, Any]) -> QARecord:
    if "question_text" in item:  # IRCoT's jsonl layout, as in ../shared/data
        context = tuple(f"{c['title']}: {c['paragraph_text']}" for c in item["contexts"])
        answers = tuple(dict.fromkeys(span for a in item["answers_objects"] for span in a["spans"]))
        return QARecord(id=str(item["question_id"]), question=item["question_text"], context=context,
                        answers=answers, dataset="hotpotqa", group=str(item["question_id"]))
    context = tuple(f"{title}: {''.join(sentences)}" for title, sentences in item["context"])  # official JSON
    return QARecord(id=str(item["_id"]), question=item["question"], context=context, answers=(item["answer"],),
                    dataset="hotpotqa", group=str(item["_id"]))


def load_hotpotqa(path: str | Path | None = None, *, limit: int | None = None) -> list[QARecord]:
    """HotpotQA distractor questions, each with its ten titled paragraphs as context documents.

    Reads the IRCoT-format jsonl in ``../shared/data`` or the official ``hotpot_dev_distractor`` JSON.
    """
    file = Path(path) if path is not None else data_dir() / HOTPOTQA_SUBSET
    if file.is_dir():
        file = file / HOTPOTQA_SUBSET
    if not file.is_file():
        raise DatasetError(f"dataset file {file} does not exist (set --data-dir or CASCADE_DATA_DIR)")
    raw = file.read_bytes()
    try:
        items = (orjson.loads(raw) if raw.lstrip().startswith(b"[")
                 else [orjson.loads(line) for line in raw.splitlines() if line.strip()])
    except orjson.JSONDecodeError as error:
        raise DatasetError(f"{file} is neither HotpotQA JSON nor JSON lines: {error}") from None
    records = []
    for number, item in enumerate(items[:limit] if limit is not None else items, start=1):
        try:
            records.append(_hotpot_record(item))
        except (KeyError, TypeError, ValueError) as error:
            raise DatasetError(f"{file}: record {number} is not a HotpotQA question: missing {error}") from None
    return records


def load_qa(dataset: str, directory: str | Path | None = None, *, limit: int | None = None) -> list[QARecord]:
    """One of the QA evaluation sets by name: squad, squad_v2 or hotpotqa."""
    root = data_dir(directory)
    if dataset == "squad":
        return load_squad(root / SQUAD_V2_SUBSET, unanswerable=False, limit=limit)
    if dataset == "squad_v2":
        return load_squad(root / SQUAD_V2_SUBSET, limit=limit)
    if dataset == "hotpotqa":
        return load_hotpotqa(root / HOTPOTQA_SUBSET, limit=limit)
    raise DatasetError(f"unknown dataset {dataset!r}; choose squad, squad_v2 or hotpotqa")


def contexts_by_id(datasets: Iterable[str], directory: str | Path | None = None) -> dict[str, str]:
    """Every question's context documents as one text, by question id, for the named QA datasets
    (what the deferral features' "the answer is a span of the context" check reads)."""
    return {r.id: "\n\n".join(r.context) for name in sorted(set(datasets)) for r in load_qa(name, directory)}


@dataclass(frozen=True)
class OutcomeTable:
    """Per-prompt outcomes of several models: score (1 = correct) and dollar cost of each."""

    prompts: tuple[str, ...]
    models: tuple[str, ...]
    scores: np.ndarray  # (prompts, models)
    costs: np.ndarray | None  # (prompts, models) dollars, None where the source has no costs
    groups: tuple[str, ...]  # benchmark each prompt comes from
    dropped: int = 0  # prompts left out because a model's score or cost was missing

    def __len__(self) -> int:
        return len(self.prompts)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    csv.field_size_limit(sys.maxsize)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist (set --data-dir or CASCADE_DATA_DIR)") from None


def _numbers(rows: list[dict[str, str]], columns: Sequence[str], path: Path) -> np.ndarray:
    """A float matrix of the columns; empty or missing cells (a short row) become NaN, anything else
    unparseable is an error naming the file, the row (data rows from 1) and the column."""
    values = np.full((len(rows), len(columns)), np.nan)
    for number, row in enumerate(rows):
        for column, name in enumerate(columns):
            cell = (row.get(name) or "").strip()
            try:
                values[number, column] = float(cell) if cell else np.nan
            except ValueError:
                raise DatasetError(
                    f"{path}, row {number + 1}: column {name!r} is not a number: {cell[:40]!r}") from None
    return values


def load_routerbench(paths: Sequence[str | Path]) -> OutcomeTable:
    """RouterBench outcome CSVs (score, ``<model>|model_response``, ``<model>|total_cost`` columns),
    concatenated; every file must cover the same models. Prompts where some model has no score or
    cost (the published ARC-Challenge tables have a few) are left out and counted in ``dropped``."""
    if not paths:
        raise DatasetError("no RouterBench files given")
    tables = []
    for path in map(Path, paths):
        header, rows = _read_csv(path)
        models = tuple(c.removesuffix("|total_cost") for c in header if c.endswith("|total_cost"))
        if not models or "prompt" not in header:
            raise DatasetError(f"{path} is not a RouterBench table: no 'prompt' or '<model>|total_cost' columns")
        unscored = [m for m in models if m not in header]
        if unscored:
            raise DatasetError(f"{path}: no score column for {unscored} (their '|total_cost' columns are there)")
        tables.append((path, models, rows))
    models = tables[0][1]
    for path, other, _ in tables[1:]:
        if set(other) != set(models):
            raise DatasetError(f"{path} covers models {sorted(other)}, expected {sorted(models)}")
    rows = [row for _, _, table_rows in tables for row in table_rows]
    scores = np.vstack([_numbers(table_rows, models, path) for path, _, table_rows in tables])
    costs = np.vstack([_numbers(table_rows, [f"{m}|total_cost" for m in models], path)
                       for path, _, table_rows in tables])
    complete = ~(np.isnan(scores).any(axis=1) | np.isnan(costs).any(axis=1))
    return OutcomeTable(
        prompts=tuple(row["prompt"] or "" for row, keep in zip(rows, complete, strict=True) if keep),
        models=models,
        scores=scores[complete],
        costs=costs[complete],
        groups=tuple(row.get("eval_name", "") for row, keep in zip(rows, complete, strict=True) if keep),
        dropped=int((~complete).sum()),
    )


def load_routellm_gsm8k(path: str | Path | None = None) -> OutcomeTable:
    """RouteLLM's GSM8K outcomes: correctness of Mixtral-8x7B and GPT-4-1106 per prompt (no costs)."""
    file = Path(path) if path is not None else data_dir() / ROUTELLM_GSM8K
    header, rows = _read_csv(file)
    models = tuple(c for c in header if c != "prompt" and not c.endswith("_response"))
    if "prompt" not in header or not models:
        raise DatasetError(f"{file} is not RouteLLM's outcome table: no 'prompt' or model columns")
    try:
        scores = np.array([[row[m].strip().lower() == "true" for m in models] for row in rows], np.float64)
    except (KeyError, AttributeError) as error:
        raise DatasetError(f"{file}: a correctness value is missing ({error})") from None
    return OutcomeTable(prompts=tuple(r["prompt"] for r in rows), models=models,
                        scores=scores.reshape(len(rows), len(models)), costs=None,
                        groups=("gsm8k",) * len(rows))
