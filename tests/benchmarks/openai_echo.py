"""An OpenAI-compatible backend that answers at once: the stand-in model server of the overhead
benchmark (``bench_openai_tiers``) and of the tests of tiers placed in the ingress.

``POST /v1/chat/completions`` answers "Paris" in two tokens with ``logprobs`` and the requested
``top_logprobs``. The model name sets the confidence: a name containing ``unsure`` gets token
log-probabilities of -3 (any threshold policy escalates it), any other name -0.01 (accepted).
``python -m tests.benchmarks.openai_echo --port N`` serves it with uvicorn; ``--delay-ms D`` makes
every answer take D ms (a model's generation time, spent asleep: no CPU).

For the tests of one query failing among others, a last message containing ``[refuse]`` gets HTTP
400, ``[fail]`` HTTP 500, and ``[too long]`` the 400 a server gives a prompt over its context
window, ``[slow]`` is answered after two seconds, and ``[garbled]`` gets a completion whose usage no
model gives (2**64 - 1 prompt tokens); ``GET /v1/calls`` counts the chat requests per model name.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from functools import cache

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = ("Par", "is")
DELAY_S = 0.0  # set from --delay-ms
SLOW_S = 2.0  # the answer to a last message containing [slow]


@cache
def completion(model: str, top_logprobs: int) -> bytes:
    """The serialized chat completion for one model name and number of alternatives."""
    logprob = -3.0 if "unsure" in model else -0.01
    tokens = [{"token": token, "logprob": logprob,
               "top_logprobs": [{"token": token, "logprob": logprob}]
               + [{"token": f"alt{k}", "logprob": logprob - 2.0 - k} for k in range(1, top_logprobs)]}
              for token in ANSWER]
    return orjson.dumps({
        "id": "chatcmpl-echo", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(ANSWER)},
                     "logprobs": {"content": tokens}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": len(ANSWER), "total_tokens": 12 + len(ANSWER)},
    })


REFUSALS = {"[refuse]": (400, "refused by the echo"), "[fail]": (500, "the echo failed"),
            "[too long]": (400, "This model's maximum context length is 2048 tokens")}
CALLS: Counter[str] = Counter()


def last_message(body: dict[str, object]) -> str:
    messages = body.get("messages")
    return str(messages[-1].get("content", "")) if isinstance(messages, list) and messages else ""


def refusal(last: str) -> Response | None:
    """The error response a marker in the last message asks for, if any."""
    for marker, (status, message) in REFUSALS.items():
        if marker in last:
            return Response(orjson.dumps({"error": {"message": message}}), status, media_type="application/json")
    return None


async def chat_completions(request: Request) -> Response:
    body = orjson.loads(await request.body())
    CALLS[str(body.get("model", "echo"))] += 1
    last = last_message(body)
    refused = refusal(last)
    if refused is not None:
        return refused
    top = int(body.get("top_logprobs") or 1) if body.get("logprobs") else 1
    delay_s = SLOW_S if "[slow]" in last else DELAY_S
    if delay_s:
        await asyncio.sleep(delay_s)
    answer = completion(str(body.get("model", "echo")), max(1, top))
    if "[garbled]" in last:
        answer = answer.replace(b'"prompt_tokens":12', b'"prompt_tokens":18446744073709551615')
    return Response(answer, media_type="application/json")


async def models(request: Request) -> Response:
    return Response(orjson.dumps({"object": "list", "data": [{"id": "echo", "object": "model"}]}),
                    media_type="application/json")


async def calls(request: Request) -> Response:
    return Response(orjson.dumps(dict(CALLS)), media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                        Route("/v1/models", models), Route("/v1/calls", calls)])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="time every answer takes, asleep")
    args = parser.parse_args()
    global DELAY_S
    DELAY_S = args.delay_ms / 1000
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
