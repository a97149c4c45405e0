"""The trail recorder: trails of concurrent requests coalesced into one call, failures isolated per
batch, nothing buffered lost at shutdown. Pure asyncio (no Ray, no Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from cascade.router import Trail
from cascade.schemas import Query
from services.recorder import TrailRecorder


def trails(*ids: str) -> list[Trail]:
    return [Trail(query=Query(id=i, prompt="q"), next_tier=0) for i in ids]


async def test_trails_of_one_window_are_recorded_in_one_call() -> None:
    calls: list[list[str]] = []

    async def record(batch: Sequence[Trail]) -> None:
        calls.append([t.query.id for t in batch])

    recorder = TrailRecorder(record, wait_s=0.02)
    recorder.add(trails("a"))
    recorder.add(trails("b", "c"))
    recorder.add([])
    assert calls == [] and recorder.pending == 3, "nothing written on the request's path"
    await asyncio.sleep(0.1)
    assert calls == [["a", "b", "c"]]
    recorder.add(trails("d"))
    await asyncio.sleep(0.1)
    assert calls == [["a", "b", "c"], ["d"]], "a later request starts a window of its own"


async def test_a_failing_batch_does_not_lose_the_others_and_close_records_what_is_buffered() -> None:
    recorded: list[str] = []

    async def record(batch: Sequence[Trail]) -> None:
        if any(t.query.id == "poison" for t in batch):
            raise ValueError("unserializable")
        recorded.extend(t.query.id for t in batch)

    recorder = TrailRecorder(record, wait_s=600.0, max_batch=2)
    recorder.add(trails("a", "poison", "b", "c"))
    await recorder.flush()
    assert recorded == ["b", "c"], "the batch with the poisoned trail fails alone"
    recorder.add(trails("d"))
    await asyncio.wait_for(recorder.close(), timeout=5)
    assert recorded == ["b", "c", "d"], "close records what is buffered without waiting out the window"


def test_a_replica_freezes_its_start_up_heap() -> None:
    """Objects alive after start-up leave the collector's generations (a full collection skips them)."""
    import gc

    from services.replica import freeze_start_up_heap

    kept = [[i] for i in range(1000)]  # lists: objects the collector tracks
    threshold = gc.get_threshold()
    try:
        freeze_start_up_heap()
        assert gc.get_freeze_count() >= len(kept)
        assert not any(o is kept[0] for o in gc.get_objects())  # frozen objects are out of every generation
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_a_replica_collects_its_young_generation_at_its_threshold() -> None:
    """The young generation is collected after the configured number of new objects, not Python's 700;
    the older generations keep their thresholds, and the ingress takes the number from its settings."""
    import gc

    from services.replica import YOUNG_GC_THRESHOLD, freeze_start_up_heap
    from services.settings import ServerConfig

    threshold = gc.get_threshold()
    try:
        freeze_start_up_heap(5_000)
        assert gc.get_threshold() == (5_000, *threshold[1:])
        freeze_start_up_heap()
        assert gc.get_threshold()[0] == YOUNG_GC_THRESHOLD > 700
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert ServerConfig().gc_threshold == YOUNG_GC_THRESHOLD
    assert ServerConfig(gc_threshold=700).gc_threshold == 700
    with pytest.raises(ValidationError, match="gc_threshold"):
        ServerConfig(gc_threshold=0)
