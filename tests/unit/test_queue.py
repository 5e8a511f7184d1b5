"""The work queue: dedup, one worker per key, backoff on failure, delayed keys, pausing."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from kubepim.engine.queue import WorkQueue


async def _until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``condition`` with a deadline (no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_a_key_added_many_times_while_waiting_is_processed_once() -> None:
    async def scenario() -> None:
        seen: list[str] = []

        async def process(key: str) -> None:
            seen.append(key)

        queue = WorkQueue(process, workers=4)
        queue.pause()
        for _ in range(5):
            queue.add("a")
        queue.add("b")
        runner = asyncio.create_task(queue.run())
        queue.resume()
        await _until(lambda: len(seen) == 2)
        assert await queue.drain(1.0)
        assert sorted(seen) == ["a", "b"]
        runner.cancel()

    _run(scenario)


def test_one_worker_per_key_and_a_key_added_while_processing_runs_again_after() -> None:
    async def scenario() -> None:
        running: set[str] = set()
        overlaps: list[str] = []
        calls: list[str] = []
        release = asyncio.Event()

        async def process(key: str) -> None:
            if key in running:
                overlaps.append(key)
            running.add(key)
            calls.append(key)
            await release.wait()
            running.discard(key)

        queue = WorkQueue(process, workers=8)
        runner = asyncio.create_task(queue.run())
        queue.add("a")
        await _until(lambda: calls == ["a"])
        queue.add("a")  # while a worker holds it
        queue.add("a")
        await asyncio.sleep(0)
        assert calls == ["a"]  # not taken by a second worker
        release.set()
        await _until(lambda: len(calls) == 2)
        assert await queue.drain(1.0)
        assert calls == ["a", "a"] and overlaps == []
        runner.cancel()

    _run(scenario)


def test_a_failed_key_is_retried_with_growing_backoff_then_forgotten_on_success() -> None:
    async def scenario() -> None:
        attempts: list[float] = []
        loop = asyncio.get_running_loop()

        async def process(key: str) -> None:
            attempts.append(loop.time())
            if len(attempts) < 4:
                raise RuntimeError("API server unavailable")

        queue = WorkQueue(process, workers=2, base=0.01, cap=0.05)
        runner = asyncio.create_task(queue.run())
        queue.add("expiry")
        await _until(lambda: len(attempts) == 4)
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert all(gap >= 0.004 for gap in gaps), gaps  # jittered within [delay/2, delay]
        assert gaps[-1] <= 0.2, gaps  # capped: milliseconds, not the next resync
        assert "expiry" not in queue._failures  # success resets the backoff
        runner.cancel()

    _run(scenario)


def test_backoff_doubles_per_failure_up_to_the_cap() -> None:
    queue = WorkQueue(lambda key: asyncio.sleep(0), base=0.01, cap=0.1)
    delays = [queue.retry("k") for _ in range(6)]
    for failures, delay in enumerate(delays):
        ceiling = min(0.1, 0.01 * 2 ** failures)
        assert ceiling / 2 <= delay <= ceiling


def test_delayed_keys_fire_in_deadline_order_and_the_earliest_add_wins() -> None:
    async def scenario() -> None:
        seen: list[str] = []

        async def process(key: str) -> None:
            seen.append(key)

        woken: list[str] = []
        queue = WorkQueue(process, workers=1, woken=woken.append)
        runner = asyncio.create_task(queue.run())
        queue.add_after("late", 0.06)
        queue.add_after("early", 0.02)
        queue.add_after("late", 0.5)  # a later add does not postpone the earlier one
        assert len(queue) == 2
        queue.add("event")  # (not a delayed add: the woken hook is not told)
        await _until(lambda: seen == ["event", "early", "late"])
        assert woken == ["early", "late"]  # each told before it is added
        queue.add_after("due-already", -1.0)  # (an expiry passed while its reconcile ran)
        await _until(lambda: seen[-1] == "due-already")
        assert woken[-1] == "due-already"
        queue.add_after("cancelled", 0.01)
        queue.cancel("cancelled")
        queue.add_after("after", 0.03)
        await _until(lambda: seen[-1] == "after")
        assert "cancelled" not in seen and "cancelled" not in woken
        runner.cancel()

    _run(scenario)


def test_slow_keys_wait_until_no_other_key_does() -> None:
    async def scenario() -> None:
        seen: list[str] = []
        release = asyncio.Event()

        async def process(key: str) -> None:
            if key == "first":
                await release.wait()
            seen.append(key)

        queue = WorkQueue(process, workers=1)
        runner = asyncio.create_task(queue.run())
        queue.add("first")
        await _until(lambda: "first" in queue._processing)
        for n in range(3):
            queue.add(f"resync-{n}", slow=True)
        queue.add("expiry")  # a timer firing after the resync filled its lane
        queue.add("resync-2")  # a watch event for a key waiting in the slow lane: moved up
        assert len(queue) == 4
        release.set()
        await _until(lambda: len(seen) == 5)
        assert seen == ["first", "expiry", "resync-2", "resync-0", "resync-1"]
        assert len(queue) == 0
        runner.cancel()

    _run(scenario)


def test_cancelled_timers_hold_no_memory_until_their_deadline() -> None:
    queue = WorkQueue(lambda key: asyncio.sleep(0))
    for n in range(1000):
        queue.add_after(f"k{n}", 3600)
    for n in range(990):
        queue.cancel(f"k{n}")
    assert len(queue) == 10
    assert len(queue._delayed) <= 2 * 10 + 64 + 1  # rebuilt, not 1,000 stale entries
    assert sorted(entry[2] for entry in queue._delayed if entry[2] in
                  {f"k{n}" for n in range(990, 1000)}) == sorted(f"k{n}" for n in range(990, 1000))


def test_keys_added_while_paused_are_kept_and_processed_on_resume() -> None:
    async def scenario() -> None:
        seen: list[str] = []

        async def process(key: str) -> None:
            seen.append(key)

        queue = WorkQueue(process, workers=2)
        runner = asyncio.create_task(queue.run())
        queue.pause()
        queue.add("a")
        queue.add_after("b", 0.01)
        await _until(lambda: "b" in queue._dirty)  # the timer fired into the held queue
        assert seen == []
        queue.resume()
        await _until(lambda: sorted(seen) == ["a", "b"])
        queue.pause()
        queue.add("c")
        queue.clear()  # leadership lost: nothing carried over
        queue.resume()
        assert await queue.drain(1.0)
        assert "c" not in seen
        runner.cancel()

    _run(scenario)


def test_a_producer_can_wait_for_the_slow_lane_to_drain() -> None:
    async def scenario() -> None:
        queue = WorkQueue(lambda key: asyncio.sleep(0.001), workers=2)
        for n in range(50):
            queue.add(f"k{n}", slow=True)
        assert not await queue.slow_below(10, timeout=0.05)  # no worker yet: still 50
        runner = asyncio.create_task(queue.run())
        assert await queue.slow_below(10, timeout=5)
        runner.cancel()

    _run(scenario)


def test_at_most_slow_workers_keys_of_the_slow_lane_run_at_once() -> None:
    async def scenario() -> tuple[int, list[str]]:
        running, most, order = 0, 0, []
        release = asyncio.Event()

        async def process(key: str) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            order.append(key)
            if key.startswith("resync"):
                await release.wait()
            running -= 1

        queue = WorkQueue(process, workers=8, slow_workers=2)
        runner = asyncio.create_task(queue.run())
        for n in range(6):
            queue.add(f"resync-{n}", slow=True)
        await _until(lambda: len(order) == 2)
        queue.add("expiry")  # a free worker takes it at once, slow lane full or not
        await _until(lambda: "expiry" in order)
        release.set()
        await _until(lambda: len(order) == 7)
        runner.cancel()
        return most, order

    most, order = asyncio.run(scenario())
    assert order[2] == "expiry"  # the other four resync keys waited for a slow slot
    assert most <= 3  # two slow keys and the expiry, never more


def test_background_work_waits_until_the_queue_has_been_quiet_for_a_while() -> None:
    async def scenario() -> None:
        queue = WorkQueue(lambda key: asyncio.sleep(0.001), workers=2)
        queue.add("listed", slow=True)
        assert not await queue.quiet(timeout=0.3, settle=0.05)  # no worker yet: not quiet
        runner = asyncio.create_task(queue.run())
        assert await queue.quiet(timeout=5, settle=0.2)
        assert queue.idle()
        runner.cancel()

    _run(scenario)


def test_due_work_presses_while_it_waits_or_runs_and_the_slow_lane_does_not() -> None:
    # Deliveries wait while this holds (notifier): reconciles of due keys, queued or running.
    async def scenario() -> None:
        release = asyncio.Event()

        async def process(key: str) -> None:
            await release.wait()

        queue = WorkQueue(process, workers=2)
        runner = asyncio.create_task(queue.run())
        assert not queue.pressing()
        queue.add("resync-1", slow=True)
        await _until(lambda: "resync-1" in queue._processing)
        assert not queue.pressing()  # a resync running: deliveries need not wait
        queue.add("approval")
        assert queue.pressing()
        await _until(lambda: "approval" in queue._processing)
        assert queue.pressing()  # still running: still pressing
        release.set()
        await _until(lambda: not queue._processing)
        assert not queue.pressing()
        runner.cancel()

    _run(scenario)
