"""Server-side batching of signature calls, as TF Serving's batching session does it (``--enable_batching``).

Concurrent requests to the same signature of the same model version are queued and run as one call: their
inputs are concatenated along the batch dimension, the signature runs once, and each request gets its own
rows of every output back. Parameters and their meaning are TF Serving's (BatchingOptions, from the
``--batching_parameters_file``):

* a batch closes when it holds ``max_batch_size`` rows; a request larger than that is refused;
* a batch runs as soon as a batch thread is free and it is full or its oldest request has waited
  ``batch_timeout_micros`` (0: run at once; batches still form while every thread is busy);
* at most ``max_enqueued_batches`` batches wait per signature; a request that would need one more is refused
  with UNAVAILABLE, so overload is answered quickly instead of queueing without bound;
* ``num_batch_threads`` batches run at a time; ``allowed_batch_sizes`` pads a batch up to the next size
  (repeating a row, whose outputs are dropped).

Errors and messages follow tensorflow_serving/batching/batching_session.cc and batching_util.h. One
deliberate difference: when a batched call fails and the batch held several requests, each is re-run alone,
so a malformed request fails only itself and not the requests that happened to share its batch.
"""

import dataclasses
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np
from absl import logging

from tfrecsys.serving.config_files import BatchingOptions
from tfrecsys.serving.errors import ServingError
from tfrecsys.serving.monitoring import ServingMetrics

Arrays = dict[str, np.ndarray]
RunFunction = Callable[[Arrays], Arrays]


@dataclasses.dataclass(eq=False)
class _Task:
    inputs: Arrays
    size: int
    enqueued: float
    deadline: float | None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: Arrays | None = None
    error: BaseException | None = None


@dataclasses.dataclass
class _Batch:
    tasks: list
    size: int = 0
    first_enqueued: float = 0.0


@dataclasses.dataclass
class _Queue:
    run: RunFunction
    batches: list  # oldest first; the last one is open unless full


def batch_size_of(inputs: Arrays) -> int:
    """The 0th-dimension size shared by every input; ServingError when there is none."""
    if not inputs:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() must have at least one input tensor")
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                "Batching Run() input tensors must have at least one dimension")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                            "Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


class BatchScheduler:
    """Queues per key (a signature of a loaded version) served by ``num_batch_threads`` batch threads."""

    def __init__(self, options: BatchingOptions, metrics: ServingMetrics | None = None):
        self.options = options
        self._metrics = metrics
        self._timeout_s = options.batch_timeout_micros / 1e6
        self._condition = threading.Condition()
        self._queues: dict[object, _Queue] = {}
        self._stopped = False
        self._threads = [threading.Thread(target=self._process_batches, name=f"{options.thread_pool_name}-{i}",
                                          daemon=True) for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, key, run: RunFunction, inputs: Arrays, deadline: float | None = None) -> Arrays:
        """Runs ``run(inputs)`` as part of a batch with the other requests of ``key``; returns this request's
        rows of the outputs. ``deadline`` (time.monotonic()) bounds the wait in the queue."""
        size = batch_size_of(inputs)
        if size > self.options.max_batch_size:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, (
                f"Task size {size} is larger than maximum input batch size {self.options.max_batch_size}"))
        task = _Task(inputs=inputs, size=size, enqueued=time.monotonic(), deadline=deadline)
        if self._metrics:
            self._metrics.batch_input_size.observe(size)
        with self._condition:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "The batch scheduler is stopped")
            queue = self._queues.setdefault(key, _Queue(run=run, batches=[]))
            open_batch = queue.batches[-1] if queue.batches else None
            if open_batch is None or open_batch.size + size > self.options.max_batch_size:
                if len(queue.batches) >= self.options.max_enqueued_batches:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                        "The batch scheduling queue to which this task was submitted is full")
                open_batch = _Batch(tasks=[], first_enqueued=task.enqueued)
                queue.batches.append(open_batch)
            open_batch.tasks.append(task)
            open_batch.size += size
            self._condition.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def forget(self, key) -> None:
        """Drops the queue of an unloaded version once it is empty (its waiting requests still run)."""
        with self._condition:
            queue = self._queues.get(key)
            if queue is not None and not queue.batches:
                del self._queues[key]

    def stop(self) -> None:
        """Fails the requests still queued with UNAVAILABLE and ends the batch threads."""
        with self._condition:
            self._stopped = True
            pending = [batch for queue in self._queues.values() for batch in queue.batches]
            self._queues.clear()
            self._condition.notify_all()
        for batch in pending:
            for task in batch.tasks:
                task.error = ServingError(grpc.StatusCode.UNAVAILABLE, "The batch scheduler is stopped")
                task.done.set()
        for thread in self._threads:
            thread.join()

    def _next_batch(self) -> tuple[_Queue, _Batch] | None:
        """Under the lock: waits for the oldest batch that is full or has waited its timeout."""
        while not self._stopped:
            now = time.monotonic()
            ready, wake_at = None, None
            for queue in self._queues.values():
                if not queue.batches:
                    continue
                batch = queue.batches[0]
                due = batch.first_enqueued + self._timeout_s
                full = batch.size >= self.options.max_batch_size or len(queue.batches) > 1
                if full or due <= now:
                    if ready is None or batch.first_enqueued < ready[1].first_enqueued:
                        ready = (queue, batch)
                else:
                    wake_at = due if wake_at is None else min(wake_at, due)
            if ready is not None:
                ready[0].batches.pop(0)
                return ready
            self._condition.wait(None if wake_at is None else max(0.0, wake_at - now))
        return None

    def _process_batches(self) -> None:
        while True:
            with self._condition:
                picked = self._next_batch()
            if picked is None:
                return
            queue, batch = picked
            # Whatever happens, every request of the batch gets an answer.
            try:
                self._process(queue.run, batch)
            except BaseException as error:  # noqa: BLE001
                logging.exception("Batch of %d requests failed", len(batch.tasks))
                for task in batch.tasks:
                    if not task.done.is_set():
                        task.error = error
                        task.done.set()

    def _process(self, run: RunFunction, batch: _Batch) -> None:
        dequeued = time.monotonic()
        if self._metrics:
            for task in batch.tasks:
                self._metrics.batch_queuing_latency.observe((dequeued - task.enqueued) * 1e6,
                                                            self.options.thread_pool_name)
        live = [task for task in batch.tasks if task.deadline is None or task.deadline > dequeued]
        for task in batch.tasks:
            if task.deadline is not None and task.deadline <= dequeued:
                task.error = ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                           "Run() timeout exceeded while waiting in batching queue")
                task.done.set()
        if not live:
            return
        try:
            outputs = self._run_merged(run, live)
        except Exception as error:  # noqa: BLE001  (any failure of the batched call is retried per request)
            if len(live) == 1:
                live[0].error = error
                live[0].done.set()
                return
            for task in live:
                self._run_alone(run, task)
            return
        for task, task_outputs in zip(live, outputs, strict=True):
            task.outputs = task_outputs
            task.done.set()

    def _run_alone(self, run: RunFunction, task: _Task) -> None:
        try:
            task.outputs = self._run_merged(run, [task])[0]
        except Exception as error:  # noqa: BLE001  (this request's own failure is its answer)
            task.error = error
        task.done.set()

    def _run_merged(self, run: RunFunction, tasks: list[_Task]) -> list[Arrays]:
        total = sum(task.size for task in tasks)
        padded = self.options.padded_size(total)
        if self._metrics:
            self._metrics.batch_padding_size.observe(padded - total, str(padded))
            self._metrics.batch_processed_size.observe(padded)
            self._metrics.batch_wrapped_run_count.increment()
        merged = {alias: self._merge([task.inputs[alias] for task in tasks], padded - total, alias)
                  for alias in tasks[0].inputs}
        outputs = run(merged)
        for alias, array in outputs.items():
            if array.ndim == 0:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, "Batched output tensor has 0 dimensions")
            if array.shape[0] != padded:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, (
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of "
                    f"the input tensors (output {alias})"))
        split_at = np.cumsum([task.size for task in tasks])[:-1]
        per_output = {alias: np.split(array[:total], split_at) for alias, array in outputs.items()}
        return [{alias: parts[index] for alias, parts in per_output.items()} for index in range(len(tasks))]

    def _merge(self, arrays: list[np.ndarray], padding: int, alias: str) -> np.ndarray:
        trailing = {array.shape[1:] for array in arrays}
        if len(trailing) > 1:
            if not self.options.pad_variable_length_inputs:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, (
                    f"Tensors with name '{alias}' from different tasks have different shapes and padding is turned "
                    "off. Set pad_variable_length_inputs to true, or ensure that all tensors with the same name "
                    "have equal dimensions starting with the first dim."))
            arrays = _pad_to_common_shape(arrays, alias)
        if padding:
            arrays = arrays + [np.repeat(arrays[-1][:1], padding, axis=0)]
        return np.concatenate(arrays, axis=0)


def _pad_to_common_shape(arrays: list[np.ndarray], alias: str) -> list[np.ndarray]:
    """Pads each array's non-batch dimensions up to the largest, with its own first element (batching_util.cc)."""
    ranks = {array.ndim for array in arrays}
    if len(ranks) > 1:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"Tensors with name '{alias}' from different tasks have different ranks")
    target = tuple(max(sizes) for sizes in zip(*(array.shape[1:] for array in arrays)))
    padded = []
    for array in arrays:
        widths = [(0, 0)] + [(0, want - have) for want, have in zip(target, array.shape[1:])]
        if array.size == 0 and any(after for _, after in widths):
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"Cannot pad empty tensor '{alias}': it has no first element to pad with")
        padded.append(np.pad(array, widths, constant_values=array.flat[0]) if array.size else array)
    return padded
