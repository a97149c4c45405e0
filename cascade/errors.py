"""Error messages a user can act on."""

from __future__ import annotations

import re

from pydantic import ValidationError


def validation_summary(error: ValidationError, root: str = "<root>") -> str:
    """Each problem as 'field.path: message', joined by '; '."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or root}: {e['msg']}" for e in error.errors())


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.\-@+]+){2,}")
_RAY_IDS = re.compile(r"\s*\((?:pid|ip)=[^)]*\)|\b(?:actor_id|pid|ip|node_id|worker_id|task_id)[=:]\s*\S+",
                      re.IGNORECASE)


def public_message(error: BaseException, limit: int = 300) -> str:
    """What a client may read of an error: its type and the first line of its message, with file
    paths and Ray process identifiers removed, at most ``limit`` characters (log the full error)."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    first = _RAY_IDS.sub("", _PATH.sub("<path>", first)).strip()
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
