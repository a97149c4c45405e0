"""The coalescer: callers who come while a run is under way share the next run; faults stay with their caller."""

from __future__ import annotations

import asyncio

import pytest

from cascade.coalesce import Coalescer


class Doubler:
    """Doubles numbers, a run at a time, each run held until released; -1 is an item it cannot take."""

    def __init__(self) -> None:
        self.runs: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int]:
        self.runs.append(list(items))
        await self.release.wait()
        if -1 in items:
            raise ValueError("cannot double -1")
        return [2 * i for i in items]


async def test_a_lone_caller_runs_at_once_and_alone() -> None:
    doubler = Doubler()
    doubler.release.set()
    coalescer = Coalescer(doubler)
    assert await coalescer(3) == 6
    assert await coalescer(4) == 8
    assert doubler.runs == [[3], [4]], "nothing under way: each caller ran at once"


async def test_callers_during_a_run_share_the_next_one() -> None:
    doubler = Doubler()
    coalescer = Coalescer(doubler)
    first = asyncio.create_task(coalescer(1))
    await asyncio.sleep(0)
    later = [asyncio.create_task(coalescer(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    assert doubler.runs == [[1]], "the later callers wait for the run under way"
    doubler.release.set()
    assert await first == 2
    assert await asyncio.gather(*later) == [4, 6, 8]
    assert doubler.runs == [[1], [2, 3, 4]]
    assert (coalescer.runs, coalescer.items) == (2, 4)


async def test_a_fault_in_a_shared_run_fails_its_own_caller_alone() -> None:
    doubler = Doubler()
    coalescer = Coalescer(doubler)
    first = asyncio.create_task(coalescer(1))
    await asyncio.sleep(0)
    later = [asyncio.create_task(coalescer(n)) for n in (2, -1, 4)]
    await asyncio.sleep(0)
    doubler.release.set()
    await first
    results = await asyncio.gather(*later, return_exceptions=True)
    assert results[0] == 4 and results[2] == 8
    assert isinstance(results[1], ValueError)
    assert doubler.runs == [[1], [2, -1, 4], [2], [-1], [4]], "the shared run failed, so each caller ran alone"


async def test_a_cancelled_caller_leaves_the_others_served() -> None:
    doubler = Doubler()
    coalescer = Coalescer(doubler)
    first = asyncio.create_task(coalescer(1))
    await asyncio.sleep(0)
    gone, staying = asyncio.create_task(coalescer(2)), asyncio.create_task(coalescer(3))
    await asyncio.sleep(0)
    gone.cancel()
    doubler.release.set()
    assert await first == 2
    assert await staying == 6
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert doubler.runs == [[1], [3]], "the cancelled caller's item was not run"
    assert await coalescer(5) == 10, "the coalescer is idle again"


async def test_a_run_with_too_few_results_is_an_error_not_a_silent_drop() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    with pytest.raises(RuntimeError, match="1 items"):
        await Coalescer(short)(7)
