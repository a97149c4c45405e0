"""The core router with scripted engines: it escalates exactly what its policy rejects, costs add up,
and failing tiers degrade service instead of dropping requests."""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Sequence

import numpy as np
import pytest

from cascade.costs import ModelPrice
from cascade.engines.base import (
    Deadline,
    DeadlineExceededError,
    EngineError,
    PartialGenerationError,
    PromptTooLongError,
    each_alone,
    gathered,
)
from cascade.engines.scripted import ScriptedEngine, ScriptedReply
from cascade.policies import PRESETS, AcceptAllPolicy
from cascade.policies.base import PolicyDecision
from cascade.router import AllTiersFailedError, Mode, Router, Tier, UnknownTierError
from cascade.schemas import Generation, Query
from cascade.signals import SignalBatch, signals_of

SMALL_PRICE = ModelPrice(input_per_million=1.0, output_per_million=2.0)
LARGE_PRICE = ModelPrice(input_per_million=10.0, output_per_million=20.0)


def small_script(query: Query) -> ScriptedReply:
    """Confident short answers for questions starting 'easy', long unsure ones otherwise."""
    if query.question.startswith("easy"):
        return ScriptedReply("Paris", [-0.05, -0.1])
    return ScriptedReply("it might perhaps be one of several possible cities here", [-1.2] * 11)


def large_script(query: Query) -> ScriptedReply:
    return ScriptedReply("Lyon", [-0.2])


def queries(n: int) -> list[Query]:
    return [Query(prompt=f"{'easy' if i % 3 else 'hard'} question number {i}", context=["a b c"]) for i in range(n)]


def two_tier_router(small: ScriptedEngine | None = None, large: ScriptedEngine | None = None) -> Router:
    return Router([
        Tier("small", small or ScriptedEngine("small-model", small_script), PRESETS["v1"], SMALL_PRICE),
        Tier("large", large or ScriptedEngine("large-model", large_script), AcceptAllPolicy(), LARGE_PRICE),
    ])


async def test_router_escalates_exactly_what_the_policy_rejects() -> None:
    small = ScriptedEngine("small-model", small_script)
    large = ScriptedEngine("large-model", large_script)
    router = two_tier_router(small, large)
    batch = queries(12)
    answers = await router.route(batch)

    generations = await ScriptedEngine("small-model", small_script).generate(batch)
    expected_escalations = PRESETS["v1"].decide(signals_of(generations)).escalate
    escalated = np.array([a.tier == "large" for a in answers])
    assert np.array_equal(escalated, expected_escalations)
    assert 0 < escalated.sum() < len(batch)
    assert len(small.calls) == 1 and len(small.calls[0]) == len(batch)
    sent_to_large = sorted(i for call in large.calls for i in call)
    assert sent_to_large == sorted(q.id for q, e in zip(batch, escalated, strict=True) if e)
    assert [a.request_id for a in answers] == [q.id for q in batch]
    for answer in answers:
        if answer.tier == "large":
            assert answer.answer == "Lyon" and "escalated by v1" in answer.reason
            assert [a.tier for a in answer.attempts] == ["small", "large"]
        else:
            assert answer.answer == "Paris" and answer.reason.startswith("accepted by v1")


class FussyPolicy:
    """v1, failing on any batch that holds an answer of exactly three tokens (a policy's features
    failing on one answer, for the router's isolation of scoring)."""

    kind = "fussy"

    def decide(self, signals: SignalBatch) -> PolicyDecision:
        if (signals.column("n_tokens") == 3).any():
            raise ValueError("no decision on three tokens")
        return PRESETS["v1"].decide(signals)

    def explain(self, signals: SignalBatch, index: int, escalate: bool) -> str:
        return PRESETS["v1"].explain(signals, index, escalate)


async def test_an_answer_that_cannot_be_scored_goes_on_alone_and_its_batch_mates_are_not_generated_again() -> None:
    def script(query: Query) -> ScriptedReply:
        return ScriptedReply("one two three", [-0.1] * 3) if "fussy" in query.question else small_script(query)

    small = ScriptedEngine("small-model", script)
    router = Router([Tier("small", small, FussyPolicy(), SMALL_PRICE),
                     Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy(), LARGE_PRICE)])
    batch = [Query(prompt="easy one"), Query(prompt="easy fussy one"), Query(prompt="hard one")]
    for finishing in ("each", "together"):
        answers = await router.route(batch) if finishing == "each" else [
            o.answer for o in await router.answer(batch, mode="throughput")]
        assert [a.tier if a else None for a in answers] == ["small", "large", "large"], finishing
        assert answers[1] is not None
        assert "small tier's answer cannot be scored (ValueError: no decision on three tokens)" in answers[1].reason
    assert [len(call) for call in small.calls] == [3, 3], "the small model answered each batch once"


async def test_an_answer_of_nan_log_probabilities_goes_on_alone() -> None:
    """A NaN log-probability (a model's numerics failing) gives a NaN confidence, which is below no
    threshold: that answer is not accepted but goes on to the next tier, alone."""
    def script(query: Query) -> ScriptedReply:
        return ScriptedReply("Paris", [float("nan"), -0.1]) if "broken" in query.question else small_script(query)

    small = ScriptedEngine("small-model", script)
    answers = await two_tier_router(small=small).route([Query(prompt="easy one"), Query(prompt="easy broken one")])
    assert [a.tier for a in answers] == ["small", "large"] and len(small.calls) == 1
    assert "small tier's answer cannot be scored (ValueError: confidence is NaN" in answers[1].reason
    paid = answers[1].attempts[0]
    assert (paid.tier, paid.decision, paid.completion_tokens) == ("small", None, 2) and paid.cost > 0


async def test_costs_add_up_across_tiers() -> None:
    answers = await two_tier_router().route(queries(6))
    for answer in answers:
        expected = 0.0
        for attempt in answer.attempts:
            price = SMALL_PRICE if attempt.tier == "small" else LARGE_PRICE
            part = (attempt.prompt_tokens * price.input_per_million
                    + attempt.completion_tokens * price.output_per_million) / 1e6
            assert attempt.cost == pytest.approx(part)
            expected += part
        assert answer.cost == pytest.approx(expected)
        assert answer.prompt_tokens == sum(a.prompt_tokens for a in answer.attempts)
    hard = next(a for a in answers if a.tier == "large")
    assert hard.attempts[0].cost > 0, "an escalated answer pays for its small-model call too"


async def test_three_tier_cascade_stops_at_the_first_accepting_tier() -> None:
    medium = ScriptedEngine("medium-model", lambda q: ScriptedReply("Nice", [-0.1] if "number 3" in q.question
                                                                    else [-2.0]))
    router = Router([
        Tier("small", ScriptedEngine("small-model", small_script), PRESETS["v1"], SMALL_PRICE),
        Tier("medium", medium, PRESETS["v1"], ModelPrice(input_per_million=3.0)),
        Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy(), LARGE_PRICE),
    ])
    tiers = [a.tier for a in await router.route(queries(7))]
    assert tiers == ["large", "small", "small", "medium", "small", "small", "large"]


async def test_accepted_answers_are_final_before_escalations_finish() -> None:
    large = ScriptedEngine("large-model", large_script, delay_s=0.5)
    router = two_tier_router(large=large)
    trails = await router.first_pass(queries(6))
    done = [t for t in trails if t.done]
    assert done and len(done) < len(trails)
    assert not large.calls, "the batched first pass does not wait for the large tier"
    pending = [asyncio.create_task(router.finish(t)) for t in trails if not t.done]
    finished = await asyncio.gather(*pending)
    assert {a.tier for a in finished} == {"large"}


async def test_small_tier_failure_goes_straight_to_the_large_tier() -> None:
    router = two_tier_router(small=ScriptedEngine("small-model", small_script, failure=ConnectionError("down")))
    answers = await router.route(queries(4))
    assert {a.tier for a in answers} == {"large"}
    assert all("small tier failed" in a.reason and not a.degraded for a in answers)


async def test_large_tier_failure_returns_the_small_answer_marked_degraded() -> None:
    router = two_tier_router(large=ScriptedEngine("large-model", large_script, failure=TimeoutError("slow")))
    answers = await router.route(queries(6))
    degraded = [a for a in answers if a.degraded]
    assert degraded and all(a.tier == "small" and "large tier failed" in a.reason for a in degraded)
    assert all(not a.degraded for a in answers if a.reason.startswith("accepted by v1"))


async def test_tier_timeout_counts_as_a_failure() -> None:
    router = Router([
        Tier("small", ScriptedEngine("small-model", small_script, delay_s=2.0), PRESETS["v1"], timeout_s=0.05),
        Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy()),
    ])
    answers = await router.route(queries(2))
    assert all(a.tier == "large" and "small-model did not answer the batch within 0.05 s" in a.reason
               for a in answers)


class DeadlineBlindEngine(ScriptedEngine):
    """An engine that does not keep the deadline it is given."""

    async def generate(self, queries: Sequence[Query], deadline: Deadline | None = None) -> list[Generation]:
        return await super().generate(queries)


async def test_the_router_abandons_a_tier_that_does_not_keep_its_deadline() -> None:
    router = Router([
        Tier("small", DeadlineBlindEngine("small-model", small_script, delay_s=30.0), PRESETS["v1"], timeout_s=0.05),
        Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy()),
    ])
    started = asyncio.get_running_loop().time()
    answers = await router.route(queries(2))
    assert asyncio.get_running_loop().time() - started < 5
    assert all(a.tier == "large" and "small-model did not answer the batch within 0.55 s" in a.reason
               for a in answers)


async def test_a_query_that_runs_late_fails_alone_with_its_own_deadline_error() -> None:
    made = ScriptedEngine("m")._generation(Query(prompt="q"), ScriptedReply("a", [-0.1]))

    async def answer(delay_s: float) -> Generation:
        await asyncio.sleep(delay_s)
        return made

    async def times_out_by_itself() -> Generation:
        raise TimeoutError("the model's own socket timed out")

    assert await each_alone([("q1", answer(0)), ("q2", answer(0))], Deadline.after(1.0), "m") == [made, made]
    with pytest.raises(PartialGenerationError) as partial:
        await each_alone([("q1", answer(0)), ("q2", answer(30)), ("q3", times_out_by_itself())], Deadline.after(0.05),
                         "m")
    on_time, late, own = partial.value.results
    assert on_time == made
    assert isinstance(late, DeadlineExceededError) and str(late) == "m did not answer query q2 within 0.05 s"
    assert type(own) is TimeoutError, "a timeout that is not the deadline's keeps its own type"
    assert pickle.loads(pickle.dumps(late)).query_id == "q2"
    with pytest.raises(DeadlineExceededError, match="query q1 within"):  # a lone query: its own error
        await each_alone([("q1", answer(30))], Deadline.after(0.05), "m")
    started: list[str] = []

    async def starts() -> Generation:
        started.append("q1")
        return made

    with pytest.raises(DeadlineExceededError, match=r"query q1 within 0\.05 s"):  # due on arrival: never started
        await each_alone([("q1", starts())], Deadline(due=time.time() - 1, timeout_s=0.05), "m")
    assert not started
    ahead = pickle.loads(pickle.dumps(Deadline(due=time.time() + 3600, timeout_s=0.05)))  # as Ray sends it
    with pytest.raises(DeadlineExceededError):  # a clock behind the caller's: still within timeout_s of arrival
        await asyncio.wait_for(each_alone([("q1", answer(30))], ahead, "m"), timeout=5)


async def test_every_tier_failing_raises_a_clear_error() -> None:
    router = two_tier_router(
        small=ScriptedEngine("small-model", small_script, failure=ConnectionError("small down")),
        large=ScriptedEngine("large-model", large_script, failure=ConnectionError("large down")),
    )
    with pytest.raises(AllTiersFailedError, match="every tier failed"):
        await router.route(queries(1))


def test_router_rejects_duplicate_tier_names() -> None:
    engine = ScriptedEngine("m")
    with pytest.raises(ValueError, match="unique"):
        Router([Tier("a", engine, AcceptAllPolicy()), Tier("a", engine, AcceptAllPolicy())])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prompt": "   "}, "'prompt' is empty"),
    ({"messages": [{"role": "system", "content": "be brief"}]}, "no non-empty user message"),
    ({}, "exactly one of 'messages' or 'prompt'"),
    ({"prompt": "q", "params": {"max_tokens": 0}}, "max_tokens"),
])
def test_bad_queries_are_rejected_with_the_field_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Query.model_validate(kwargs)


async def test_throughput_mode_sends_every_escalation_in_one_call() -> None:
    large = ScriptedEngine("large-model", large_script)
    router = two_tier_router(large=large)
    batch = queries(12)
    outcomes = await router.answer(batch, "throughput")
    escalated = [o.answer.request_id for o in outcomes if o.answer is not None and o.answer.tier == "large"]
    assert escalated and large.calls == [escalated], "one batched large call for all escalations"
    assert [o.answer.request_id for o in outcomes if o.answer is not None] == [q.id for q in batch]
    one_by_one = await two_tier_router().route(batch)
    assert [o.answer.tier for o in outcomes if o.answer is not None] == [a.tier for a in one_by_one]


@pytest.mark.parametrize("mode", ["interactive", "throughput", "progressive"])
async def test_every_mode_reports_failures_per_query(mode: Mode) -> None:
    broken = ScriptedEngine("small-model", small_script, failure=RuntimeError("down"))
    down = ScriptedEngine("large-model", large_script, failure=RuntimeError("down"))
    router = two_tier_router(broken, down)
    outcomes = await router.answer(queries(3), mode)
    assert len(outcomes) == 3 and all(isinstance(o.error, AllTiersFailedError) and o.answer is None
                                      for o in outcomes)


async def test_a_forced_tier_above_the_plan_cap_is_refused_by_the_core() -> None:
    from cascade.router import TierNotAllowedError
    from cascade.schemas import RoutingControls

    small = ScriptedEngine("small-model", small_script)
    router = two_tier_router(small)
    capped = Query(prompt="anything", routing=RoutingControls(force_tier="large", max_tier="small"))
    unknown = Query(prompt="anything", routing=RoutingControls(force_tier="huge"))
    batch_mates = queries(14)
    trail, *others, nowhere = await router.begin([capped, *batch_mates, unknown])
    assert all(t.rejected is None for t in others), "its batch-mates are answered"
    assert [t.query.id for t in others] == [q.id for q in batch_mates], "in their order"
    assert isinstance(trail.rejected, TierNotAllowedError) and "stops at the small tier" in str(trail.rejected)
    assert isinstance(nowhere.rejected, UnknownTierError)
    assert [len(call) for call in small.calls] == [14], "the batch is not split to find the refused queries"
    with pytest.raises(TierNotAllowedError):
        await router.route([capped])
    answers = await router.route([Query(prompt="anything", routing=RoutingControls(force_tier="small",
                                                                                   max_tier="small"))])
    assert answers[0].tier == "small"


async def test_a_deferred_trail_resumes_and_its_final_answer_pays_for_every_tier() -> None:
    """Progressive answers: the provisional small answer now; the checkpoint (JSON round trip, as the
    queue stores it) resumes the same trail, whose final answer lists both tiers' attempts and cost."""
    from cascade.router import TrailCheckpoint

    large = ScriptedEngine("large-model", large_script)
    router = two_tier_router(large=large)
    hard, easy = queries(2)  # "hard question number 0": the small tier escalates it
    deferred, accepted = await router.answer([hard, easy], "progressive")
    assert deferred.answer is not None and deferred.answer.tier == "small" and deferred.rest is not None
    assert "provisional" in deferred.answer.reason and not large.calls, "the large tier waits for the job"
    assert accepted.answer is not None and accepted.rest is None, "an accepted answer is final at once"
    rest = TrailCheckpoint.model_validate_json(deferred.rest.model_dump_json())
    [resumed] = await router.answer([rest])
    final = resumed.answer
    assert final is not None and resumed.rest is None
    assert [a.tier for a in final.attempts] == ["small", "large"] and final.tier == "large"
    assert final.cost == pytest.approx(deferred.answer.cost + final.attempts[1].cost)
    assert final.cost == pytest.approx(sum(a.cost for a in final.attempts))


async def test_a_progressive_route_whose_small_answer_is_empty_finishes_in_the_request() -> None:
    """An empty provisional answer tells the client nothing: the route goes on at once instead."""
    def small(query: Query) -> ScriptedReply:
        return ScriptedReply("", []) if "empty" in query.question else small_script(query)

    router = two_tier_router(ScriptedEngine("small-model", small))
    empty, unsure = await router.answer([Query(prompt="empty one"), Query(prompt="hard one")], "progressive")
    assert empty.answer is not None and empty.rest is None
    assert (empty.answer.tier, empty.answer.answer) == ("large", "Lyon") and "provisional" not in empty.answer.reason
    assert unsure.answer is not None and unsure.answer.tier == "small" and unsure.rest is not None


async def test_a_checkpoint_forcing_a_tier_above_its_cap_is_refused_alone() -> None:
    """A resumed route obeys the same rules as a new one: the core refuses it, its batch-mates go on."""
    from cascade.router import TierNotAllowedError, TrailCheckpoint
    from cascade.schemas import RoutingControls

    router = two_tier_router()
    capped = Query(prompt="anything", routing=RoutingControls(force_tier="large", max_tier="small"))
    checkpoint = TrailCheckpoint(query=capped, next_tier=1, attempts=[], latency=[], reasons=[], best=None,
                                 batch_size=1)
    refused, answered = await router.answer([checkpoint, *queries(1)])
    assert isinstance(refused.error, TierNotAllowedError) and answered.answer is not None


async def test_the_learned_deferral_policy_decides_from_the_queries_it_answers() -> None:
    """A deferral policy on the small tier reads each answer's tokens, question and context: an answer
    that is a span of its context is accepted, one that is not is escalated (a linear model on the
    span-of-context feature alone)."""
    from cascade.policies import DeferralPolicy
    from cascade.policies.deferral import LinearScorer
    from cascade.policies.features import FEATURE_NAMES

    span = FEATURE_NAMES.index("span_of_context")
    coef = tuple(-8.0 if i == span else 0.0 for i in range(len(FEATURE_NAMES)))
    policy = DeferralPolicy(name="span-check", model=LinearScorer(
        mean=(0.0,) * len(FEATURE_NAMES), scale=(1.0,) * len(FEATURE_NAMES), coef=coef, intercept=4.0),
        isotonic_x=(0.0, 1.0), isotonic_y=(0.0, 1.0), threshold=0.5)
    router = Router([Tier("small", ScriptedEngine("small-model", small_script), policy, SMALL_PRICE),
                     Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy(), LARGE_PRICE)])
    batch = [Query(prompt=f"easy question {i}", context=[context]) for i, context in enumerate(
        ["Paris is the capital of France.", "Lyon is a city in France."])]
    first, second = await router.route(batch)
    assert first.tier == "small" and first.reason.startswith("accepted by span-check")
    assert second.tier == "large" and second.reason.startswith("escalated by span-check")


async def test_an_empty_answer_has_no_confidence_is_escalated_and_is_never_cached() -> None:
    """No token to be sure of: a policy reading zeroed signals would accept it with confidence 1.0, and so
    would a threshold of 0 (a live one reaches 0 when a model's empty answers exceed the escalation budget)."""
    from cascade.cache import SemanticCache
    from cascade.embeddings import StaticEmbedder
    from cascade.schemas import RoutingControls

    def small(query: Query) -> ScriptedReply:
        if "empty" in query.question:
            return ScriptedReply("", [])
        return ScriptedReply("Paris", [-0.05]) if "easy" in query.question else small_script(query)

    def large(query: Query) -> ScriptedReply:
        return ScriptedReply("", []) if "everywhere" in query.question or "hard" in query.question \
            else ScriptedReply("Lyon", [-0.2])

    router = two_tier_router(ScriptedEngine("small-model", small), ScriptedEngine("large-model", large))
    empty, easy, both, zero, forced, hard = await router.route([
        Query(prompt="easy but empty"), Query(prompt="easy"), Query(prompt="empty everywhere"),
        Query(prompt="easy but empty", routing=RoutingControls(threshold=0.0)),
        Query(prompt="easy but empty", routing=RoutingControls(force_tier="small")), Query(prompt="hard one")])
    assert (empty.tier, empty.answer) == ("large", "Lyon") and both.tier == "large"
    assert easy.tier == "small" and easy.confidence is not None and easy.confidence > 0.9
    assert empty.attempts[0].confidence == 0.0 and empty.attempts[0].decision == "escalate"
    assert "escalated: the small tier's answer is empty" in empty.reason
    assert both.confidence == 0.0 and both.answer == "" and "accepted: the large tier's answer is empty" in both.reason
    assert (zero.tier, zero.answer) == ("large", "Lyon"), "a threshold of 0 does not accept an empty answer"
    assert (forced.tier, forced.answer) == ("small", "") and "forced to the small tier by the request, its answer " \
        "empty" in forced.reason
    assert hard.tier == "small" and hard.degraded and hard.answer == small_script(Query(prompt="hard one")).text, \
        "an empty answer from the last tier never replaces an earlier one"
    assert "returning the small tier's answer, marked degraded" in hard.reason and len(hard.attempts) == 2
    assert hard.cost == pytest.approx(sum(a.cost for a in hard.attempts)) and hard.cost > hard.attempts[0].cost
    cache = SemanticCache("redis://127.0.0.1:1/0", embedder=StaticEmbedder())
    assert cache.storable(easy, "large") and not cache.storable(both, "large")


async def test_an_empty_middle_answer_is_escalated_and_a_capped_one_held() -> None:
    """Three tiers: the middle tier's empty answer goes on to the last; a plan that stops at the middle tier
    holds it there, saying why."""
    from cascade.schemas import RoutingControls

    def middle(query: Query) -> ScriptedReply:
        return ScriptedReply("", [])

    router = Router([
        Tier("small", ScriptedEngine("small-model", small_script), PRESETS["v1"], SMALL_PRICE),
        Tier("medium", ScriptedEngine("medium-model", middle), PRESETS["v1"], SMALL_PRICE),
        Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy(), LARGE_PRICE)])
    free, capped = await router.route([Query(prompt="hard question"),
                                       Query(prompt="hard question", routing=RoutingControls(max_tier="medium"))])
    assert (free.tier, free.answer) == ("large", "Lyon") and [a.tier for a in free.attempts] == ["small", "medium",
                                                                                                 "large"]
    assert free.attempts[1].confidence == 0.0 and free.attempts[1].decision == "escalate"
    assert capped.tier == "small" and capped.degraded, "the middle tier's empty answer does not replace the small one"
    assert "medium is the highest tier this query's plan allows, its answer empty" in capped.reason


def test_a_batch_run_query_by_query_keeps_the_answers_of_the_queries_that_did_not_fail() -> None:
    made = ScriptedEngine("m")._generation(Query(prompt="q"), ScriptedReply("a", [-0.1]))
    down, too_long = EngineError("m is down"), PromptTooLongError("q2", 9, 1, 8)
    assert gathered([made, made]) == [made, made]
    with pytest.raises(PartialGenerationError) as partial:
        gathered([made, down, too_long])
    assert partial.value.results == [made, down, too_long] and "2 of 3 queries failed" in str(partial.value)
    with pytest.raises(PartialGenerationError) as every:  # all failed: still each query's own error
        gathered([down, too_long])
    assert every.value.results == [down, too_long]
    assert "2 of 2 queries failed: EngineError: m is down" in str(every.value)
    with pytest.raises(asyncio.CancelledError):
        gathered([made, asyncio.CancelledError()])


async def test_a_query_failing_alone_goes_on_to_the_next_tier_alone() -> None:
    small = ScriptedEngine("small-model", small_script, failing_marker="[fail]")
    large = ScriptedEngine("large-model", large_script)
    batch = [Query(prompt=f"easy question {i}{' [fail]' if i == 2 else ''}") for i in range(4)]
    answers = await two_tier_router(small, large).route(batch)
    assert len(small.calls) == 1 and large.calls == [[batch[2].id]], "the batch-mates are not called again"
    assert [a.tier for a in answers] == ["small", "small", "large", "small"]
    failed = answers[2].attempts[0]
    assert failed.tier == "small" and failed.decision is None and failed.error is not None and "failed" in failed.error
    assert not any(a.degraded for a in answers)


async def test_queries_failing_together_each_carry_only_their_own_error() -> None:
    """Two tenants' queries fail at the small tier in one batch: each answer's route names its own
    query's failure, never its batch-mate's request id."""
    small = ScriptedEngine("small-model", small_script, failing_marker="[fail]")
    batch = [Query(prompt="easy question [fail]", tenant="acme"), Query(prompt="easy question [fail]", tenant="globex")]
    answers = await two_tier_router(small).route(batch)
    for answer, own, other in ((answers[0], batch[0], batch[1]), (answers[1], batch[1], batch[0])):
        error = answer.attempts[0].error or ""
        assert own.id in error and other.id not in error and other.id not in answer.reason
        assert answer.tier == "large" and not answer.degraded
