"""Lifelong histories stored once per user and cut at input time, against the same histories stored per row:
bytes on disk and input examples/s, measured in one run.

    python -m bench.run_all user_histories

One seeded event log: 2,000 users with 1 to 1,000 events each (uniform; item ids below 100,000 and their
category), and 100,000 examples (impressions at a uniform time inside a random user's activity span, a click
label). Each example's history is its user's most recent 500 events strictly before it (item and category):

* per row: every example stores its own ``hist_item_id`` / ``hist_category_id`` (4 TFRecord shards), as the
  per-row builders write them;
* per user: the examples store only ``user_id``, ``timestamp`` and ``click`` (4 TFRecord shards), and the
  event log is stored once, one Parquet row per user (``tfrecsys.data.user_histories``); ``make_dataset``
  cuts the histories after decoding.

Both go through ``make_dataset(training=True)`` (batch 512, shuffle buffer 10,000, same seed), consumed as
training consumes it: an iterator advanced in a ``tf.function`` loop, after a warm-up that traces it and fills
the first windows. The two alternate ROUNDS times and the medians are compared (the machine is shared and
noisy). The benchmark first checks that both give the same first batch.
"""

import os
import statistics
import tempfile
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from bench.bench_input_pipeline import input_rates
from tfrecsys.data import tfrecord
from tfrecsys.data.input import make_dataset
from tfrecsys.data.user_histories import UserHistories, UserHistoryStore, write_user_histories
from tfrecsys.features.schema import FeatureSchema

NUM_USERS, MAX_EVENTS, NUM_ITEMS, NUM_CATEGORIES = 2_000, 1_000, 100_000, 500
NUM_EXAMPLES, MAX_LEN, SHARDS = 100_000, 500, 4
BATCH, SHUFFLE_BUFFER, SEED = 512, 10_000, 0
WARMUP_BATCHES, INPUT_BATCHES, ROUNDS = 20, 150, 5
START, SPAN = 1_600_000_000, 365 * 86_400
SEQUENCES = {"hist_item_id": "item_id", "hist_category_id": "category_id"}


def simulate(seed: int = SEED) -> tuple:
    """(event log columns, example columns) of the seeded world described in the module docstring."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, MAX_EVENTS + 1, NUM_USERS)
    users = np.repeat(np.arange(NUM_USERS, dtype=np.int64), counts)
    timestamps = START + rng.integers(0, SPAN, len(users))
    items = rng.integers(1, NUM_ITEMS, len(users))
    log = {"user_id": users, "timestamp": timestamps, "item_id": items, "category_id": items % NUM_CATEGORIES + 1}
    first = np.full(NUM_USERS, START + SPAN, np.int64)
    last = np.zeros(NUM_USERS, np.int64)
    np.minimum.at(first, users, timestamps)
    np.maximum.at(last, users, timestamps)
    example_users = rng.integers(0, NUM_USERS, NUM_EXAMPLES)
    example_times = first[example_users] + (rng.random(NUM_EXAMPLES) * (last - first + 1)[example_users]).astype(
        np.int64)
    examples = {"user_id": example_users, "timestamp": example_times,
                "click": rng.integers(0, 2, NUM_EXAMPLES).astype(np.float32)}
    return log, examples


def per_row_histories(log: dict, examples: dict) -> dict:
    """Each example's most recent MAX_LEN events strictly before it, per column: the per-row layout."""
    order = np.lexsort((log["item_id"], log["timestamp"], log["user_id"]))
    users, times = log["user_id"][order], log["timestamp"][order]
    # Events sorted by (user, time): the events of user u before time t end where (u, t) would be inserted.
    key = users * (SPAN + 1) + (times - START)
    cut = np.searchsorted(key, examples["user_id"] * (SPAN + 1) + (examples["timestamp"] - START), side="left")
    first = np.searchsorted(users, examples["user_id"], side="left")
    start = np.maximum(first, cut - MAX_LEN)
    histories = {}
    for feature, column in SEQUENCES.items():
        values = log[column][order]
        histories[feature] = [values[begin:end] for begin, end in zip(start, cut)]
    return histories


def schema() -> FeatureSchema:
    return FeatureSchema.from_config({
        "user_id": dict(kind="id", num_buckets=NUM_USERS),
        "timestamp": dict(kind="dense", dtype="int64"),
        "hist_item_id": dict(kind="sequence", num_buckets=NUM_ITEMS, max_len=MAX_LEN),
        "hist_category_id": dict(kind="sequence", num_buckets=NUM_CATEGORIES + 1, max_len=MAX_LEN,
                                 aligned_with="hist_item_id"),
        "click": dict(kind="label"),
    })


def megabytes(paths) -> float:
    return sum(os.path.getsize(path) for path in paths) / 1e6


def main():
    features = schema()
    log, examples = simulate()
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        per_row_files = tfrecord.write_sharded({**examples, **per_row_histories(log, examples)}, directory,
                                               "per_row", SHARDS)
        per_row_write = time.perf_counter() - started
        started = time.perf_counter()
        row_files = tfrecord.write_sharded(examples, directory, "rows", SHARDS)
        store_path = os.path.join(directory, "user_histories.parquet")
        write_user_histories(store_path, log["user_id"], log["timestamp"],
                             {column: log[column] for column in SEQUENCES.values()})
        per_user_write = time.perf_counter() - started
        started = time.perf_counter()
        store = UserHistoryStore.load(store_path)
        load_seconds = time.perf_counter() - started
        histories = UserHistories(store, features, user_feature="user_id", time_feature="timestamp",
                                  sequences=SEQUENCES)

        def pipeline(files, user_histories=None):
            return make_dataset(files, features, BATCH, targets={"score": "click"}, training=True,
                                shuffle_buffer=SHUFFLE_BUFFER, seed=SEED, user_histories=user_histories)

        inputs = {"per_row": lambda: pipeline(per_row_files),
                  "per_user": lambda: pipeline(row_files, histories)}
        first = {name: next(iter(make())) for name, make in inputs.items()}
        for name, value in first["per_row"][0].items():
            np.testing.assert_array_equal(first["per_user"][0][name].numpy(), value.numpy(), err_msg=name)
        rates = {name: [] for name in inputs}
        cpu = {name: [] for name in inputs}
        for _ in range(ROUNDS):
            for name, make in inputs.items():
                rate, cpu_per_example = input_rates(make(), INPUT_BATCHES, WARMUP_BATCHES)
                rates[name].append(rate)
                cpu[name].append(cpu_per_example)
        per_row_mb = megabytes(per_row_files)
        rows_mb, store_mb = megabytes(row_files), megabytes([store_path])

    lengths = np.asarray([len(h) for h in per_row_histories(log, examples)["hist_item_id"]])
    # Row offsets, timestamps and the two int64 columns (the hash table aside).
    store_memory_mb = 8 * (store.num_users + 1 + store.num_events * (1 + len(SEQUENCES)))
    print(f"{NUM_USERS:,} users, {store.num_events:,} events (longest user {store.longest:,}); {NUM_EXAMPLES:,} "
          f"examples, history max_len {MAX_LEN} (mean length {lengths.mean():.0f}), item + category columns")
    print(f"bytes on disk: per-row histories {per_row_mb:,.1f} MB (TFRecord) | per-user store {store_mb:,.1f} MB "
          f"(Parquet) + example rows {rows_mb:,.1f} MB (TFRecord) = {store_mb + rows_mb:,.1f} MB; "
          f"ratio per-row / per-user {per_row_mb / (store_mb + rows_mb):.1f}x")
    print(f"  per example: per-row {per_row_mb * 1e6 / NUM_EXAMPLES:,.0f} bytes, per-user "
          f"{rows_mb * 1e6 / NUM_EXAMPLES:,.0f} bytes; the store: {store_mb * 1e6 / store.num_events:.1f} bytes "
          "per event, whatever the examples")
    print(f"write: per-row {per_row_write:.1f} s, per-user {per_user_write:.1f} s; store load {load_seconds:.2f} s, "
          f"{store_memory_mb / 1e6:,.1f} MB in memory")
    median = {name: statistics.median(values) for name, values in rates.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"input, make_dataset(training=True), batch {BATCH}, shuffle buffer {SHUFFLE_BUFFER:,}; "
          f"median of {ROUNDS} alternating rounds of {INPUT_BATCHES} batches")
    for name, label in {"per_row": "per-row histories (parsed)", "per_user": "per-user store, cut at input"}.items():
        print(f"  {label:30s} {median[name]:>9,.0f} examples/s  {median_cpu[name]:5.2f} CPU µs/example   "
              f"rounds {[round(r) for r in rates[name]]}")
    print(f"ratio per-user cut / per-row: input examples/s {median['per_user'] / median['per_row']:.2f}x, "
          f"CPU per example {median_cpu['per_user'] / median_cpu['per_row']:.2f}x")


if __name__ == "__main__":
    main()
