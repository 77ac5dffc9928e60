"""The one client-side pacer (``integrations._rest.RateLimit``) on a fake clock: no window ever holds more than
its budget, concurrent callers share it, and a slot too far away is a ``RateLimited`` error (the target is then
reported as throttled), never a silent stall."""

from __future__ import annotations

import threading

import pytest

from digestguard.errors import RateLimited
from integrations import aws_cloudtrail, github
from integrations._rest import RateLimit, rate_limit
from integrations.registry import DOCKER_HUB_REQUESTS_PER_MINUTE, RegistryClient


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, s: float) -> None:  # a sleeping caller moves time on
        with self.lock:
            self.now = max(self.now, self.now + s)


def _max_in_window(times: list[float], per: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + per) for t in times)


def test_no_window_holds_more_than_the_budget():
    clock = Clock()
    limit = RateLimit(80, 60.0, clock=clock, sleep=clock.sleep)
    granted = []
    for _ in range(250):
        limit.acquire("github POST")
        granted.append(clock())
    assert _max_in_window(granted, 60.0) == 80
    assert granted[79] == 0.0 and granted[80] == pytest.approx(60.0)  # a burst, then one slot per freed slot
    assert granted[-1] == pytest.approx(180.0)
    assert limit.waited > 0


def test_threads_share_one_budget():
    limit = RateLimit(5, 0.3)
    import time
    times: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(4):
            limit.acquire()
            with lock:
                times.append(time.monotonic())

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(times) == 16
    assert _max_in_window(times, 0.29) <= 5


def test_a_slot_beyond_max_wait_is_refused_not_waited_for():
    clock = Clock()
    limit = RateLimit(2, 60.0, clock=clock, sleep=clock.sleep)
    limit.acquire()
    limit.acquire()
    with pytest.raises(RateLimited) as e:
        limit.acquire("github POST /repos/acme/x/pulls", max_wait=5.0)
    assert e.value.retry_after == pytest.approx(60.0)
    assert "throttled" in str(e.value) and "github POST" in str(e.value)
    assert clock() == 0.0  # nothing slept, and the refused call took no slot
    clock.now = 60.0
    assert limit.acquire(max_wait=5.0) == 0.0


def test_bad_budgets_are_input_errors():
    with pytest.raises(Exception, match="not a budget"):
        RateLimit(0, 60)


def test_vendor_budgets_are_shared_per_endpoint():
    a = github.GitHubClient("t", "http://127.0.0.1:1/api")
    b = github.GitHubClient("t2", "http://127.0.0.1:1/api/")
    try:
        assert a.rest.write_limit is b.rest.write_limit
        assert (a.rest.write_limit.count, a.rest.write_limit.per) == (github.WRITES_PER_MINUTE, 60.0) == (80, 60.0)
    finally:
        a.close()
        b.close()
    hub = RegistryClient("docker.io")
    mirror = RegistryClient("127.0.0.1:5000", base_url="http://127.0.0.1:5000")
    assert hub.request_limit is not None and hub.request_limit.count == DOCKER_HUB_REQUESTS_PER_MINUTE
    assert mirror.request_limit is None  # a private registry has no Docker Hub budget
    ct = aws_cloudtrail._pacer("http://x" + "us-east-1")
    assert (ct.count, ct.per) == (1, pytest.approx(0.55))  # 2 a second, evenly spaced
    assert rate_limit("cloudtrail", "http://x" + "us-east-1", 1, 1.1 / aws_cloudtrail.RATE_PER_SECOND) is ct
