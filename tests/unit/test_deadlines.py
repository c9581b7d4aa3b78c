"""The coarse deadlines of the per-connection path (proxy/deadlines.py), on a real loop."""

from __future__ import annotations

import asyncio

import pytest

from portcullis.proxy import loop as proxy_loop
from portcullis.proxy.deadlines import TICK, Deadlines, deadlines_for

LOOPS = pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])


async def _fired_at(deadlines: Deadlines, delays: list[float]) -> list[float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    times: dict[int, float] = {}
    done = loop.create_future()

    def expire(key: int) -> None:
        times[key] = loop.time()
        if len(times) == len(delays):
            done.set_result(None)

    for key, delay in enumerate(delays):
        deadlines.add(start + delay, key, expire)
    await asyncio.wait_for(done, 5)
    return [times[key] - start for key in range(len(delays))]


@LOOPS
def test_fires_never_early_and_about_a_tick_late_at_most(use_uvloop: bool) -> None:
    proxy_loop.run(_fires_never_early_and_about_a_tick_late_at_most(), use_uvloop=use_uvloop)


async def _fires_never_early_and_about_a_tick_late_at_most() -> None:
    deadlines = deadlines_for(asyncio.get_running_loop())
    delays = [0.0, 0.01, 0.12, 0.05, 0.3, 0.3]
    for delay, at in zip(delays, await _fired_at(deadlines, delays), strict=True):
        assert delay <= at < delay + TICK + 0.1


@LOOPS
def test_cancelled_do_not_fire(use_uvloop: bool) -> None:
    proxy_loop.run(_cancelled_do_not_fire(), use_uvloop=use_uvloop)


async def _cancelled_do_not_fire() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    fired: list[str] = []
    when = loop.time() + 0.05
    slot_a = deadlines.add(when, "a", fired.append)
    deadlines.add(when, "b", fired.append)
    deadlines.cancel(slot_a, "a")
    deadlines.cancel(slot_a, "never added")  # no error
    await asyncio.sleep(0.05 + TICK + 0.05)
    assert fired == ["b"]
    deadlines.close()


@LOOPS
def test_expiry_cancels_or_adds(use_uvloop: bool) -> None:
    proxy_loop.run(_expiry_cancels_or_adds(), use_uvloop=use_uvloop)


async def _expiry_cancels_or_adds() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    fired: list[str] = []
    when = loop.time() + 0.02
    slot = 0

    def first(key: str) -> None:
        fired.append(key)
        deadlines.cancel(slot, "second" if key == "first" else "first")
        deadlines.add(loop.time() + 0.05, "later", fired.append)

    slot = deadlines.add(when, "first", first)
    deadlines.add(when, "second", first)
    await asyncio.sleep(0.02 + 0.05 + 2 * TICK + 0.05)
    # Whichever of the two ran first cancelled the other.
    assert len(fired) == 2 and fired[1] == "later" and fired[0] in ("first", "second")
    deadlines.close()


@LOOPS
def test_a_failing_expiry_is_reported_and_the_rest_still_fire(use_uvloop: bool) -> None:
    proxy_loop.run(_a_failing_expiry_is_reported_and_the_rest_still_fire(), use_uvloop=use_uvloop)


async def _a_failing_expiry_is_reported_and_the_rest_still_fire() -> None:
    loop = asyncio.get_running_loop()
    reported: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
    deadlines = Deadlines(loop)
    fired: list[str] = []

    def broken(key: str) -> None:
        raise RuntimeError(key)

    when = loop.time() + 0.01
    deadlines.add(when, "bad", broken)
    deadlines.add(when, "good", fired.append)
    await asyncio.sleep(0.01 + TICK + 0.05)
    assert fired == ["good"]
    assert [str(e) for e in reported] == ["bad"]
    deadlines.close()


@LOOPS
def test_closing_drops_pending_entries(use_uvloop: bool) -> None:
    proxy_loop.run(_closing_drops_pending_entries(), use_uvloop=use_uvloop)


async def _closing_drops_pending_entries() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    fired: list[str] = []
    deadlines.add(loop.time() + 0.01, "x", fired.append)
    deadlines.close()
    await asyncio.sleep(0.01 + TICK + 0.05)
    assert fired == []


def test_each_loop_gets_its_own() -> None:
    async def current() -> Deadlines:
        return deadlines_for(asyncio.get_running_loop())

    first = asyncio.run(current())
    second = asyncio.run(current())
    assert first is not second
    assert first.loop is not second.loop


@pytest.mark.parametrize("when", [0.0, TICK, 1.0 - 1e-9, 1e6 + 0.049])
def test_the_slot_ends_after_the_deadline(when: float) -> None:
    deadlines = Deadlines(asyncio.new_event_loop())
    try:
        assert deadlines.add(when, "k", print) * TICK > when
    finally:
        deadlines.close()
        deadlines.loop.close()
