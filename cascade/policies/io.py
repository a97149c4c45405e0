"""Policy files: JSON documents tagged by ``kind``, loaded with errors that name the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from cascade.errors import validation_summary
from cascade.policies.accept import AcceptAllPolicy
from cascade.policies.deferral import DeferralPolicy
from cascade.policies.logistic import LogisticPolicy
from cascade.policies.threshold import PRESETS, ThresholdPolicy

AnyPolicy = ThresholdPolicy | LogisticPolicy | DeferralPolicy | AcceptAllPolicy
PolicySpec = Annotated[AnyPolicy, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[AnyPolicy] = TypeAdapter(PolicySpec)


class PolicyFileError(ValueError):
    """A policy file is missing, not JSON, or not a valid policy."""


def parse_policy(document: object, source: str = "policy") -> AnyPolicy:
    """Validate a decoded policy document."""
    try:
        return _ADAPTER.validate_python(document)
    except ValidationError as error:
        raise PolicyFileError(f"{source} is not a valid policy: {validation_summary(error)}") from None


def load_policy(path: str | Path) -> AnyPolicy:
    """Load a policy file; raises PolicyFileError naming the file and the problem."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise PolicyFileError(f"policy file {file} does not exist") from None
    except OSError as error:
        raise PolicyFileError(f"policy file {file} cannot be read: {error.strerror}") from None
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise PolicyFileError(f"policy file {file} is not valid JSON: {error}") from None
    return parse_policy(document, f"policy file {file}")


def save_policy(policy: AnyPolicy, path: str | Path) -> None:
    """Write a policy as indented JSON."""
    Path(path).write_bytes(orjson.dumps(policy.model_dump(mode="json"), option=orjson.OPT_INDENT_2))


def resolve_policy(name_or_path: str) -> AnyPolicy:
    """A preset name (v1, v2, v3, accept) or the path of a policy file."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if name_or_path == "accept":
        return AcceptAllPolicy()
    return load_policy(name_or_path)
