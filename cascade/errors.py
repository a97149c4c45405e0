"""Error messages a user can act on."""

from __future__ import annotations

from pydantic import ValidationError


def validation_summary(error: ValidationError, root: str = "<root>") -> str:
    """Each problem as 'field.path: message', joined by '; '."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or root}: {e['msg']}" for e in error.errors())
