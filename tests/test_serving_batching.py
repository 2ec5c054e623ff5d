"""Server-side batching as TF Serving's batching parameters define it, on a stand-in signature whose calls
the test controls (no TensorFlow, so every wait is on an event, never on time)."""

import concurrent.futures
import threading
import time

import grpc
import numpy as np
import pytest

from tfrecsys.serving.batching import BatchScheduler
from tfrecsys.serving.config_files import BatchingOptions, ConfigFileError
from tfrecsys.serving.errors import ServingError
from tfrecsys.serving.monitoring import ServingMetrics

KEY = ("m", 1, 0, "serving_default")


class Signature:
    """Doubles its input; records every batched call; can hold calls until released."""

    def __init__(self, hold: bool = False):
        self.calls: list[int] = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, inputs):
        self.calls.append(len(inputs["x"]))
        self.entered.release()
        assert self.release.wait(30)
        if np.any(inputs["x"] < 0):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "negative input")
        return {"y": inputs["x"] * 2}


def rows(*values) -> dict:
    return {"x": np.array(values, np.float32)}


@pytest.fixture
def make_scheduler():
    schedulers = []

    def make(**options):
        scheduler = BatchScheduler(BatchingOptions(**options), ServingMetrics())
        schedulers.append(scheduler)
        return scheduler

    yield make
    for scheduler in schedulers:
        scheduler.stop()


def test_requests_waiting_for_a_busy_thread_are_run_as_one_batch_and_split_back(make_scheduler):
    scheduler = make_scheduler(max_batch_size=8, num_batch_threads=1)
    signature = Signature(hold=True)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(scheduler.run, KEY, signature, rows(1))
        assert signature.entered.acquire(timeout=30)  # the only thread is busy with the first request
        others = [pool.submit(scheduler.run, KEY, signature, rows(*range(10 * i, 10 * i + 2))) for i in (1, 2, 3)]
        wait_until(lambda: scheduler_queued_rows(scheduler) == 6)
        signature.release.set()
        assert first.result(30)["y"].tolist() == [2]
        for i, future in zip((1, 2, 3), others, strict=True):
            assert future.result(30)["y"].tolist() == [20 * i, 20 * i + 2]
    assert signature.calls == [1, 6]
    assert scheduler._metrics.batch_processed_size.count() == 2


def test_a_batch_waits_at_most_the_timeout_for_company(make_scheduler):
    scheduler = make_scheduler(max_batch_size=8, batch_timeout_micros=500_000, num_batch_threads=1)
    signature = Signature()
    started = time.monotonic()
    assert scheduler.run(KEY, signature, rows(1, 2))["y"].tolist() == [2, 4]
    assert time.monotonic() - started >= 0.5
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # a full batch does not wait
        started = time.monotonic()
        futures = [pool.submit(scheduler.run, KEY, signature, rows(i, i)) for i in range(4)]
        [future.result(30) for future in futures]
    assert signature.calls[1:] == [8] and time.monotonic() - started < 0.5


def test_a_request_larger_than_max_batch_size_is_refused(make_scheduler):
    scheduler = make_scheduler(max_batch_size=4)
    with pytest.raises(ServingError) as caught:
        scheduler.run(KEY, Signature(), rows(*range(5)))
    assert (caught.value.code, caught.value.message) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Task size 5 is larger than maximum input batch size 4")


def test_a_full_queue_refuses_requests_with_unavailable(make_scheduler):
    scheduler = make_scheduler(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1)
    signature = Signature(hold=True)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = pool.submit(scheduler.run, KEY, signature, rows(1, 1))
        assert signature.entered.acquire(timeout=30)
        queued = pool.submit(scheduler.run, KEY, signature, rows(2, 2))  # fills the one queued batch
        wait_until(lambda: scheduler_queued_rows(scheduler) == 2)
        with pytest.raises(ServingError) as caught:
            scheduler.run(KEY, signature, rows(3))
        assert (caught.value.code, caught.value.message) == (
            grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full")
        signature.release.set()
        assert running.result(30)["y"].tolist() == [2, 2] and queued.result(30)["y"].tolist() == [4, 4]


def test_a_failing_request_does_not_fail_the_requests_batched_with_it(make_scheduler):
    scheduler = make_scheduler(max_batch_size=8, num_batch_threads=1)
    signature = Signature(hold=True)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(scheduler.run, KEY, signature, rows(1))
        assert signature.entered.acquire(timeout=30)
        good = pool.submit(scheduler.run, KEY, signature, rows(5))
        bad = pool.submit(scheduler.run, KEY, signature, rows(-1))
        wait_until(lambda: scheduler_queued_rows(scheduler) == 2)
        signature.release.set()
        assert first.result(30)["y"].tolist() == [2] and good.result(30)["y"].tolist() == [10]
        with pytest.raises(ServingError, match="negative input"):
            bad.result(30)


def test_allowed_batch_sizes_pad_the_batch_and_drop_the_padding(make_scheduler):
    scheduler = make_scheduler(max_batch_size=8, allowed_batch_sizes=(4, 8))
    signature = Signature()
    assert scheduler.run(KEY, signature, rows(1, 2, 3))["y"].tolist() == [2, 4, 6]
    assert signature.calls == [4]
    with pytest.raises(ConfigFileError, match="Last entry in allowed_batch_sizes must match max_batch_size"):
        BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4,))


def test_requests_with_unequal_batch_dimensions_are_refused(make_scheduler):
    scheduler = make_scheduler()
    with pytest.raises(ServingError, match="Batching Run\\(\\) input tensors must have equal 0th-dimension size"):
        scheduler.run(KEY, Signature(), {"x": np.zeros(2, np.float32), "z": np.zeros(3, np.float32)})


def scheduler_queued_rows(scheduler: BatchScheduler) -> int:
    with scheduler._condition:
        return sum(batch.size for queue in scheduler._queues.values() for batch in queue.batches)


def wait_until(condition, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)
