"""The completion endpoints' plain routes, without Ray: bodies parsed in one pass with FastAPI's error
locations, served ahead of the documented routes, which OpenAPI still shows with their bodies."""

from __future__ import annotations

import json

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.routing import Route

from services.ingress import _parsed, api, json_content
from services.openai_api import ChatCompletionRequest, CompletionRequest


def test_a_valid_body_is_parsed_into_its_request_model() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "Which river flows through Paris?"}], "max_tokens": 8})
    request = _parsed(ChatCompletionRequest, body.encode(), "application/json")
    assert isinstance(request, ChatCompletionRequest) and request.max_tokens == 8
    assert request.messages[0].content == "Which river flows through Paris?"


@pytest.mark.parametrize(("model", "body", "location", "message"), [
    (ChatCompletionRequest, b"{not json", ("body",), "Invalid JSON"),
    (ChatCompletionRequest, b"", ("body",), "Invalid JSON"),
    (ChatCompletionRequest, b"[1]", ("body",), "object"),
    (ChatCompletionRequest, json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(),
     ("body", "messages", 0, "role"), "'user'"),
    (CompletionRequest, json.dumps({"prompt": "hi", "temperature": 5}).encode(), ("body", "temperature"), "2"),
    # Python's JSON reader takes a lone surrogate where pydantic's refuses it: the field's validator names it
    (CompletionRequest, json.dumps({"prompt": "\ud800 hi"}).encode(), ("body", "prompt"), "lone surrogate"),
    (CompletionRequest, b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", ("body",), "recursion"),
])
def test_an_invalid_body_is_refused_with_fastapis_error_location(model: type, body: bytes,
                                                                 location: tuple[object, ...], message: str) -> None:
    with pytest.raises(RequestValidationError) as refused:
        _parsed(model, body, "application/json")
    first = refused.value.errors()[0]
    assert tuple(first["loc"][:len(location)]) == location, first
    assert message in first["msg"], first


@pytest.mark.parametrize(("content_type", "is_json"), [
    ("application/json", True), ("application/json; charset=utf-8", True), ("Application/JSON", True),
    ("application/vnd.api+json", True), (None, False), ("", False), ("text/plain", False),
    ("application/x-www-form-urlencoded", False), ("multipart/form-data; boundary=x", False), ("text/json", False),
])
def test_a_content_type_is_json_as_fastapi_reads_it(content_type: str | None, is_json: bool) -> None:
    assert json_content(content_type) is is_json


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_json_body_sent_as_another_content_type_is_refused_naming_the_body(content_type: str | None) -> None:
    """As FastAPI's routes refuse it: a browser sends a form or text/plain POST to another site without asking."""
    body = json.dumps({"messages": [{"role": "user", "content": "Which river flows through Paris?"}]}).encode()
    with pytest.raises(RequestValidationError) as refused:
        _parsed(ChatCompletionRequest, body, content_type)
    first = refused.value.errors()[0]
    assert first["loc"] == ("body",) and "application/json" in first["msg"], first


def test_the_plain_routes_come_first_and_openapi_still_documents_both_bodies() -> None:
    first = api.router.routes[:2]
    assert [(type(r), r.path, r.methods) for r in first if isinstance(r, Route)] == [
        (Route, "/v1/chat/completions", {"POST"}), (Route, "/v1/completions", {"POST"})]
    paths = api.openapi()["paths"]
    for path, schema in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith(f"/{schema}"), body
