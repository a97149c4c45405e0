"""Request ids that say which tenant made the request, for the feedback endpoint's check.

With ``server.request_id_secret`` set, an id is a random part and an HMAC-SHA256 of that part and
the tenant under the secret, which every replica of the service shares (ingress and batch consumer).
A label is checked against the id alone: no owner is stored per request (each one a Redis key for
``feedback.owner_ttl_s``, about 150 bytes: 9 GB at 100 requests per second over the default week),
and a label is taken, and buffered, while Redis is down. Another secret disowns the ids made under
the old one: their labels are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

RANDOM_HEX = 24  # 96 random bits
SIGNATURE_HEX = 32  # the first 128 bits of the HMAC


@dataclass(frozen=True)
class RequestIds:
    """Makes and checks one service's request ids (see the module docstring)."""

    secret: bytes

    @classmethod
    def signing_with(cls, secret: str | None) -> RequestIds | None:
        """The ids signed with ``secret`` (``server.request_id_secret``); None without one."""
        return cls(secret.encode()) if secret is not None else None

    def _signature(self, random_part: str, tenant: str) -> bytes:
        mac = hmac.new(self.secret, f"{random_part}:{tenant}".encode(), hashlib.sha256)
        return mac.hexdigest()[:SIGNATURE_HEX].encode()

    def new(self, tenant: str) -> str:
        """A fresh id of a request of ``tenant``."""
        random_part = secrets.token_hex(RANDOM_HEX // 2)
        return random_part + self._signature(random_part, tenant).decode()

    def made_for(self, request_id: str, tenant: str) -> bool:
        """Whether this service made ``request_id`` for a request of ``tenant``."""
        if len(request_id) != RANDOM_HEX + SIGNATURE_HEX or not request_id.isascii():
            return False
        random_part, signature = request_id[:RANDOM_HEX], request_id[RANDOM_HEX:]
        return hmac.compare_digest(signature.encode(), self._signature(random_part, tenant))
