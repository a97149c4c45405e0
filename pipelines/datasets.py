"""Evaluation datasets as typed records, read from ``../shared/data`` or official releases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SQUAD_V2_SUBSET = Path("squad_v2") / "dev-v2.0-subset.json"
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


def _squad_questions(document: Any, path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    try:
        for article in document["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    yield qa, paragraph["context"]
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
    for qa, context in _squad_questions(_read_json(file), file):
        try:
            impossible = bool(qa.get("is_impossible", False))
            answers = () if impossible else tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
            record = QARecord(id=str(qa["id"]), question=qa["question"], context=(context,), answers=answers,
                              dataset="squad_v2" if unanswerable else "squad")
        except (KeyError, TypeError) as error:
            raise DatasetError(f"{file}: question {qa.get('id', '?')} is malformed: missing {error}") from None
        if impossible and not unanswerable:
            continue
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    return records
