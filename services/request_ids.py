"""Request ids that say which tenant made the request, and when, for the feedback endpoint's check.

With ``server.request_id_secret`` set, an id is its issue time, a random part (for a batch line, a
hash of the batch's id and the line's custom id, so that a chunk run again routes its lines under
the same ids; the issue time is then the batch's creation) and an HMAC-SHA256 of both and the tenant
under the secret, which every replica of the service shares (ingress and batch consumer). A label is
checked against the id alone, for ``feedback.owner_ttl_s`` after the id's issue time:
no owner is stored per request (a Redis key each, about 150 bytes: 9 GB at 100 requests per second
over the default week), and a label is taken, and buffered, while Redis is down. An id of another
shape (made before the secret was set, or by a replica without it) is checked by its stored owner, as
before; so is a signed id not signed for the caller while ``feedback.owner_keys`` is true (owners kept
while changing the secret). Otherwise another secret disowns the ids signed under the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.settings import CascadeSettings

TIME_HEX = 8  # seconds since the epoch
RANDOM_HEX = 16  # 64 bits: ids of one second are distinct with near certainty at any load
SIGNATURE_HEX = 32  # the first 128 bits of the HMAC
SIGNED_LENGTH = TIME_HEX + RANDOM_HEX + SIGNATURE_HEX
HEX_DIGITS = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class RequestIds:
    """Makes and checks one service's request ids (see the module docstring)."""

    secret: bytes = field(repr=False)
    max_age_s: int
    clock: Callable[[], float] = time.time

    @classmethod
    def of(cls, settings: CascadeSettings) -> RequestIds | None:
        """The service's ids: signed with ``server.request_id_secret``, labelled for ``feedback.owner_ttl_s``;
        None without a secret."""
        secret = settings.server.request_id_secret
        return cls(secret.encode(), settings.feedback.owner_ttl_s) if secret is not None else None

    def _signature(self, unsigned: str, tenant: str) -> bytes:
        mac = hmac.new(self.secret, f"{unsigned}:{tenant}".encode(), hashlib.sha256)
        return mac.hexdigest()[:SIGNATURE_HEX].encode()

    def _signed(self, tenant: str, issued_at: float, unique: str) -> str:
        unsigned = f"{int(issued_at):0{TIME_HEX}x}{unique}"
        return unsigned + self._signature(unsigned, tenant).decode()

    def new(self, tenant: str) -> str:
        """A fresh id of a request of ``tenant``."""
        return self._signed(tenant, self.clock(), secrets.token_hex(RANDOM_HEX // 2))

    def of_line(self, tenant: str, issued_at: float, line: str) -> str:
        """The id of one line of a batch (``line``: the batch's id and the line's custom id, which the
        batch keeps unique), issued when the batch was made: the same in every run of the line's chunk."""
        return self._signed(tenant, issued_at, hashlib.sha256(line.encode()).hexdigest()[:RANDOM_HEX])

    @staticmethod
    def signed_shape(request_id: str) -> bool:
        """Whether ``request_id`` has the shape of a signed id (not whether it is one)."""
        return len(request_id) == SIGNED_LENGTH and set(request_id) <= HEX_DIGITS

    def made_for(self, request_id: str, tenant: str) -> bool:
        """Whether this service made ``request_id`` for a request of ``tenant`` at most ``max_age_s`` ago."""
        if not self.signed_shape(request_id):
            return False
        unsigned, signature = request_id[:-SIGNATURE_HEX], request_id[-SIGNATURE_HEX:]
        if self.clock() - int(unsigned[:TIME_HEX], 16) > self.max_age_s:
            return False
        return hmac.compare_digest(signature.encode(), self._signature(unsigned, tenant))


def batch_line_id(ids: RequestIds | None, tenant: str, batch: Mapping[str, Any], custom_id: str) -> str:
    """A batch line's request id, the same whenever its chunk runs again (redelivered, or retried after
    a fault), so that its decision records count once in the threshold controller: signed with ``ids``
    (issued at the batch's creation), else the hash alone (an unsigned id, checked by its stored owner)."""
    line = f"{batch['id']}:{custom_id}"
    if ids is not None:
        return ids.of_line(tenant, float(batch["created_at"]), line)
    return hashlib.sha256(line.encode()).hexdigest()[:32]
