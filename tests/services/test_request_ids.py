"""Signed request ids (pure functions, no Ray): who made a request, and when, is read from its id."""

from __future__ import annotations

import pytest

from services.request_ids import SIGNED_LENGTH, RequestIds, batch_line_id
from services.settings import load_service_settings

WEEK = 7 * 24 * 3600
NOW = 1_800_000_000.0
IDS = RequestIds(b"a secret of sixteen bytes or more", WEEK, clock=lambda: NOW)


def test_an_id_is_made_for_its_tenant_only() -> None:
    made = IDS.new("acme")
    assert len(made) == SIGNED_LENGTH and RequestIds.signed_shape(made) and made != IDS.new("acme")
    assert IDS.made_for(made, "acme")
    assert not IDS.made_for(made, "globex"), "another tenant"
    other = RequestIds(b"another secret of sixteen bytes", WEEK, clock=lambda: NOW)
    assert not other.made_for(made, "acme"), "another service's secret"


def test_an_id_is_labelled_for_its_max_age_only() -> None:
    made = IDS.new("acme")
    assert RequestIds(IDS.secret, WEEK, clock=lambda: NOW + WEEK).made_for(made, "acme")
    assert not RequestIds(IDS.secret, WEEK, clock=lambda: NOW + WEEK + 1).made_for(made, "acme")


def test_a_batch_lines_id_is_the_same_in_every_run_and_signed_for_its_tenant_from_the_batchs_creation() -> None:
    made = IDS.of_line("acme", NOW - 60, "batch_1:q-1")
    assert made == IDS.of_line("acme", NOW - 60, "batch_1:q-1"), "a chunk run again routes its lines under their ids"
    assert len({made, IDS.of_line("acme", NOW - 60, "batch_1:q-2"), IDS.of_line("acme", NOW - 60, "batch_2:q-1")}) == 3
    assert RequestIds.signed_shape(made) and IDS.made_for(made, "acme") and not IDS.made_for(made, "globex")
    assert not RequestIds(IDS.secret, WEEK, clock=lambda: NOW - 60 + WEEK + 1).made_for(made, "acme"), (
        "labelled for max_age_s from the batch's creation")


def test_a_batch_lines_id_without_a_secret_is_the_same_in_every_run_and_unsigned() -> None:
    batch = {"id": "batch_1", "created_at": int(NOW)}
    made = batch_line_id(None, "acme", batch, "q-1")
    assert made == batch_line_id(None, "acme", batch, "q-1") != batch_line_id(None, "acme", batch, "q-2")
    assert len(made) == 32 and not RequestIds.signed_shape(made), "checked by its stored owner"
    assert batch_line_id(IDS, "acme", batch, "q-1") == IDS.of_line("acme", NOW, "batch_1:q-1")


@pytest.mark.parametrize("forged", [
    "0" * SIGNED_LENGTH,  # the right shape
    "nope", "", "0" * 32,  # other shapes (32: a uuid4's hex, as unsigned ids are)
    "é" * SIGNED_LENGTH, "G" * SIGNED_LENGTH,  # not hex
])
def test_an_id_it_did_not_make_is_refused(forged: str) -> None:
    assert not IDS.made_for(forged, "acme")


def test_a_changed_character_is_refused() -> None:
    made = IDS.new("acme")
    for position in range(len(made)):
        changed = made[:position] + ("1" if made[position] != "1" else "2") + made[position + 1:]
        assert not IDS.made_for(changed, "acme"), position


def test_the_secret_stays_out_of_reprs() -> None:
    secret = "x" * 16
    assert secret not in repr(load_service_settings(server={"request_id_secret": secret}).server)
    assert secret not in repr(RequestIds(secret.encode(), WEEK))


def test_signed_ids_turn_the_feedback_logs_owner_keys_off_unless_set() -> None:
    plain = load_service_settings()
    assert plain.for_router().feedback.owner_keys is None and RequestIds.of(plain) is None
    signed = load_service_settings(server={"request_id_secret": "x" * 16})
    assert signed.for_router().feedback.owner_keys is False and signed.feedback.owner_keys is None
    assert "feedback" not in signed.model_dump(exclude_unset=True), "nothing written back into the settings"
    switching = load_service_settings(server={"request_id_secret": "x" * 16}, feedback={"owner_keys": True})
    assert switching.for_router().feedback.owner_keys is True
    assert RequestIds.of(signed) == RequestIds(b"x" * 16, signed.feedback.owner_ttl_s)
    with pytest.raises(ValueError, match="request_id_secret"):
        load_service_settings(server={"request_id_secret": "short"})
