"""Signed request ids (pure functions, no Ray): who made a request is read from its id."""

from __future__ import annotations

import pytest

from services.request_ids import RANDOM_HEX, SIGNATURE_HEX, RequestIds
from services.settings import load_service_settings

IDS = RequestIds(b"a secret of sixteen bytes or more")


def test_an_id_is_made_for_its_tenant_only() -> None:
    made = IDS.new("acme")
    assert len(made) == RANDOM_HEX + SIGNATURE_HEX and made != IDS.new("acme")
    assert IDS.made_for(made, "acme")
    assert not IDS.made_for(made, "globex"), "another tenant"
    assert not RequestIds(b"another secret of sixteen bytes").made_for(made, "acme"), "another service's secret"


@pytest.mark.parametrize("forged", [
    "0" * (RANDOM_HEX + SIGNATURE_HEX),  # the right shape
    "nope", "",  # too short
    "é" * (RANDOM_HEX + SIGNATURE_HEX),  # not ASCII: refused, not a TypeError from compare_digest
])
def test_an_id_it_did_not_make_is_refused(forged: str) -> None:
    assert not IDS.made_for(forged, "acme")


def test_a_changed_character_is_refused() -> None:
    made = IDS.new("acme")
    for position in (0, RANDOM_HEX - 1, RANDOM_HEX, len(made) - 1):
        changed = made[:position] + ("1" if made[position] != "1" else "2") + made[position + 1:]
        assert not IDS.made_for(changed, "acme"), position


def test_signed_ids_turn_the_feedback_logs_owner_keys_off() -> None:
    assert load_service_settings().feedback.owner_keys
    assert RequestIds.signing_with(None) is None
    signed = load_service_settings(server={"request_id_secret": "x" * 16})
    assert not signed.feedback.owner_keys
    assert RequestIds.signing_with(signed.server.request_id_secret) == RequestIds(b"x" * 16)
    with pytest.raises(ValueError, match="request_id_secret"):
        load_service_settings(server={"request_id_secret": "short"})
