"""The feedback endpoint's owner check in an ingress built without Ray, while Redis refuses every
connection: signed request ids are checked by the id alone and their labels are buffered, where an
unsigned id's check needs its owner key in Redis and answers 503."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from services.ingress import RouterIngress
from services.openai_api import ApiError, FeedbackRequest
from services.request_ids import RequestIds
from tests.conftest import free_port

SECRET = "the test's request-id secret"


class Unserved(RouterIngress):
    """The ingress outside Serve: Serve awaits its ``__del__``; collected here, it is not called."""

    def __del__(self) -> None:
        pass


@pytest.fixture(autouse=True)
def collector_as_it_was() -> Iterator[None]:
    """The ingress freezes the heap and raises the young-generation threshold of its process (this one)."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


async def ingress(secret: str | None, owner_keys: bool | None = None) -> Any:
    """An ingress whose Redis is a port nothing listens on (its tiers are never called)."""
    tier = {"placement": "ingress", "engine": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}}
    settings = {"tiers": [{"name": "small", **tier}, {"name": "large", "policy": "accept", **tier}],
                "redis_url": f"redis://127.0.0.1:{free_port()}/0", "cache": {"enabled": False},
                "queue": {"enabled": False}, "feedback": {"owner_keys": owner_keys},
                "server": {"use_redis": True, "request_id_secret": secret,
                           "tenants": {"a": {"api_keys": ["key-a"]}, "b": {"api_keys": ["key-b"]}}}}
    made = Unserved.__new__(Unserved)
    await RouterIngress.__init__(made, settings, {})
    return made


async def test_a_signed_ids_label_is_taken_while_redis_is_down() -> None:
    made = await ingress(SECRET)
    request_id = RequestIds(SECRET.encode(), 3600).new("a")
    assert made.router.feedback.config.owner_keys is False, "signed ids: the log stores no owners"
    taken = await made.feedback(FeedbackRequest(request_id=request_id, correct=True), "Bearer key-a")
    assert taken["accepted"] and taken["buffered"] and made.router.feedback.buffered == 1
    with pytest.raises(ApiError) as refused:
        await made.feedback(FeedbackRequest(request_id=request_id, correct=False), "Bearer key-b")
    assert refused.value.status == 404 and made.router.feedback.buffered == 1
    with pytest.raises(ApiError) as unavailable:  # an id made before the secret: its stored owner decides
        await made.feedback(FeedbackRequest(request_id="0" * 32, correct=True), "Bearer key-a")
    assert unavailable.value.status == 503 and made.router.feedback.buffered == 1
    await RouterIngress.__del__(made)


async def test_an_unsigned_ids_label_needs_redis_for_its_owner() -> None:
    made = await ingress(None)
    with pytest.raises(ApiError) as unavailable:
        await made.feedback(FeedbackRequest(request_id="r" * 32, correct=True), "Bearer key-a")
    assert unavailable.value.status == 503 and made.router.feedback.buffered == 0
    await RouterIngress.__del__(made)


async def test_while_owners_are_still_stored_a_signed_id_not_signed_for_the_caller_is_looked_up() -> None:
    """``feedback.owner_keys: true`` beside a secret (switching over, or rotating the secret): an id signed
    under another secret may have a stored owner, so it is looked up, which needs Redis."""
    made = await ingress(SECRET, owner_keys=True)
    assert made.router.feedback.config.owner_keys is True
    old_secret = RequestIds(b"the secret before this one", 3600).new("a")
    with pytest.raises(ApiError) as unavailable:
        await made.feedback(FeedbackRequest(request_id=old_secret, correct=True), "Bearer key-a")
    assert unavailable.value.status == 503
    await RouterIngress.__del__(made)
