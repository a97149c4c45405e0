"""Batch input ids and job bodies, without Ray: each line's custom_id, or a made-up one that names its
place in the file and never collides with a line's own; the shape of the ids the store makes; a given-up
job's final body."""

from __future__ import annotations

import orjson
import pytest
import redis
from pydantic import ValidationError

from services.batch.schema import BatchCreate, custom_ids, given_up
from services.batch.store import is_id, new_id


def line(custom_id: str | None) -> bytes:
    return orjson.dumps({"method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}
                        | ({"custom_id": custom_id} if custom_id is not None else {}))


def test_a_line_without_an_id_is_named_by_its_place_in_the_file() -> None:
    assert custom_ids([line("a"), b"{not json", line(None)], numbers=[1, 4, 6]) == ["a", "line-4", "line-6"]
    assert custom_ids([line(None), line("b")], first=10) == ["line-11", "b"]


def test_a_made_up_id_never_collides_with_a_lines_own() -> None:
    ids = custom_ids([line(None), line("line-1"), line("line-1~"), line(None)])
    assert ids == ["line-1~~", "line-1", "line-1~", "line-4"] and len(set(ids)) == len(ids)


def test_only_the_stores_own_ids_are_ids() -> None:
    assert is_id("file", new_id("file")) and is_id("batch", new_id("batch")) and is_id("job", new_id("job"))
    made = new_id("batch")
    for value in (f"{made}:lines", made.upper(), made[:-1], f"file-{made[6:]}", "", "batch-", f"{made}0"):
        assert not is_id("batch", value), value


def test_a_completion_window_other_than_24h_is_refused_naming_it() -> None:
    assert BatchCreate(input_file_id="file-a", endpoint="/v1/completions").completion_window == "24h"
    with pytest.raises(ValidationError, match="completion_window"):
        BatchCreate(input_file_id="file-a", endpoint="/v1/completions", completion_window="bogus")


def test_a_given_up_completion_job_is_final_and_degraded_in_routing_and_in_routings() -> None:
    routing = {"tier": "small", "provisional": True, "job_id": "job-1", "degraded": False, "reason": "unsure"}
    provisional = {"object": "text_completion", "choices": [{"index": 0, "text": "Paris"}], "routing": routing,
                   "routings": [routing]}
    final = given_up(provisional, 4, ValueError("no trail in job-1"))
    expected = {**routing, "provisional": False, "degraded": True,
                "reason": "unsure; finishing the escalation failed 4 times (ValueError: no trail in job-1)"}
    assert final["routing"] == final["routings"][0] == expected
    assert final["choices"] == provisional["choices"] and provisional["routing"]["provisional"] is True


@pytest.mark.parametrize("error", [redis.TimeoutError("Timeout reading from redis.internal.svc:6379"),
                                   ConnectionRefusedError(111, "Connect call failed ('10.0.3.7', 6379)")])
def test_a_given_up_jobs_reason_names_a_store_or_network_error_by_its_type_alone(error: BaseException) -> None:
    reason = given_up({"choices": []}, 2, error)["routing"]["reason"]
    assert reason == f"finishing the escalation failed 2 times ({type(error).__name__})"
