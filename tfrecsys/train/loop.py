"""The one generic train loop: every model family trains through ``train_and_evaluate``.

It builds the model named by the config inside the strategy scope, compiles one loss and metric set per
task, resumes from the latest checkpoint in ``model_dir``, runs Keras ``fit`` in loops of
``steps_per_loop`` steps (checkpoint and TensorBoard summaries after each) and ends with a full evaluation
written to ``<model_dir>/eval_metrics.json``. Models that need their own step override ``train_step``; the
loop stays the same.

Under MultiWorkerMirroredStrategy every worker runs the same loop: batch sizes are global, the input is
split per worker (by file or by data, ``shard_policy``), only the chief writes to ``model_dir``, and a
BackupAndRestore backup in ``<model_dir>/backup`` lets a restarted cluster resume from the last loop
(docs/distributed-training.md).
"""

import contextlib
import functools
import json
import os
from typing import Optional

import tensorflow as tf
from absl import logging
from tensorflow.python.framework import func_graph

from tfrecsys.data.input import (DataError, check_schema, count_records, find_bad_record, make_dataset,
                                 resolve_files)
from tfrecsys.data.model_tables import ModelTables
from tfrecsys.data.user_histories import UserHistories
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.models.tasks import tasks_from_config
from tfrecsys.train import callbacks as callbacks_lib
from tfrecsys.train.adam import Adam
from tfrecsys.train.strategy import (check_jit_compile, check_ragged_input, is_chief, naming_lost_peers, num_workers,
                                     precision_policy, strategy_from_environment, task_name, worker_devices,
                                     worker_dir)

CHECKPOINT_SUBDIR = "checkpoints"
# BackupAndRestore's directory: the training state of the last finished loop, read back by every worker
# after a restart and removed when training ends.
BACKUP_SUBDIR = "backup"
EVAL_METRICS_FILE = "eval_metrics.json"


def optimizer_from_config(train_config):
    """The optimizer of ``config.train``: ``optimizer`` at ``learning_rate``, keeping an exponential moving
    average of the weights when ``ema_momentum`` m > 0 (``callbacks.averaged_weights`` says what uses it)."""
    # adam: Keras' algorithm, its per-step scalars built once and each variable's update one fused kernel
    # (tfrecsys.train.adam: a smaller train graph, weights within float32 rounding of Keras'); adam_keras: the
    # same with Keras' own update ops, its weights bit for bit.
    optimizers = {"adam": Adam, "adam_keras": functools.partial(Adam, fused=False),
                  "adagrad": tf.keras.optimizers.Adagrad, "sgd": tf.keras.optimizers.SGD}
    name, momentum = train_config.optimizer, float(train_config.get("ema_momentum", 0.0))
    if name not in optimizers:
        raise ValueError(f"config.train.optimizer {name!r} is not one of {sorted(optimizers)}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"config.train.ema_momentum must lie in [0, 1) (0: no weight averaging), got {momentum}")
    if momentum == 0.0:
        return optimizers[name](learning_rate=train_config.learning_rate)
    return optimizers[name](learning_rate=train_config.learning_rate, use_ema=True, ema_momentum=momentum)


def data_files(config) -> tuple[list[str], list[str]]:
    return (resolve_files(config.data.train_files, config.data.dir),
            resolve_files(config.data.eval_files, config.data.dir))


@contextlib.contextmanager
def naming_bad_files(files, schema, features=None):
    """Turns a read or parse error inside TensorFlow into a DataError naming the file and record
    (``features``: what the rows hold, default every schema feature)."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        bad = find_bad_record(files, schema, features)
        if bad is None:
            raise
        raise DataError(f"cannot read input data: {bad}") from error


def build_and_compile(config, schema: FeatureSchema, jit_compile: bool = False, before_compile=None):
    """The registry model for ``config``, compiled with its optimizer (``jit_compile``: the train and eval
    steps are XLA-compiled). Losses and metrics are the model's tasks', summed in its own step
    (``tfrecsys.models.base.RecModel``). ``before_compile(model)``: changes the model needs before it is
    compiled (Keras trains the variables that were trainable at compile time: freezing goes here)."""
    model = build_model(config, schema, ModelTables(config, schema))
    if before_compile is not None:
        before_compile(model)
    model.compile(optimizer=optimizer_from_config(config.train),
                  steps_per_execution=steps_per_execution(config.train.steps_per_execution), jit_compile=jit_compile)
    return model


def steps_per_execution(requested: int) -> int:
    """The steps per train function call under the current strategy: ``requested``, or 1 where several devices
    of this process run the step (MirroredStrategy over local devices).

    Measured with two logical CPUs on TF 2.16: in the step loop that steps_per_execution > 1 compiles, the
    all-gather of a sparse embedding gradient whose row count differs between the replicas and from one step
    to the next (any family with sequence features: DIN, DIEN, SIM, HSTU, SASRec) fails at once with "Shape
    mismatch in the collective instance", float32 or mixed precision alike; with one step per call every
    family trains. Workers of one device each (MultiWorkerMirroredStrategy) keep ``requested``: there the
    families keep their sparse gradients one length on every replica (DIN's padded history lookup, next-item
    retrieval's padded positives; docs/adding-a-model.md), and their two-worker runs train with it
    (tests/test_families_distributed.py). Ragged input is refused there with steps_per_execution > 1
    (``check_ragged_input``)."""
    devices = worker_devices(tf.distribute.get_strategy())
    if requested > 1 and len(devices) > 1:
        logging.info("%d devices in this process: steps_per_execution %d → 1", len(devices), requested)
        return 1
    return requested


def create_variables(model, schema: FeatureSchema, optimizer=None) -> None:
    """Creates ``model``'s variables and the slots of ``optimizer`` (default the model's) before ``fit`` first
    traces the train step.

    Keras layers create their variables on their first call, and a ``tf.function`` whose first trace creates
    variables is traced a second time without them: built lazily, a model pays for tracing its whole train
    step twice before the first step runs (0.7 CPU-seconds of two_tower's first step on MovieLens,
    docs/retrieval.md). Tracing the forward pass once over the schema's padded inputs (what serving sends,
    and every model takes) costs a fraction. It is traced into a bare function graph, not a ``tf.function``:
    for the same reason, a ``tf.function`` would trace it twice (DIEN: 0.4 of its 4.7 CPU-seconds to the first
    step, bench/RESULTS.md issue 12). Keras creates every weight under ``init_scope``, so the variables are
    eager ones either way, with the same initial values.
    """
    def forward(features):
        model.build_training_towers(features)
        return model(features, training=False)

    func_graph.func_graph_from_py_func("create_variables", forward, args=(), kwargs={},
                                       signature=[schema.input_signature(serving=False)])
    (optimizer or model.optimizer).build(model.trainable_variables)


def shard_policy(num_files: int, workers: int) -> str:
    """How workers split a training input of ``num_files`` files: ``file`` (each worker reads its own
    files) when every worker gets at least one, else ``data`` (every worker reads all files in the same
    order and keeps its own slice of each global batch)."""
    return "file" if num_files >= workers else "data"


def worker_slice(batch, index: int, count: int):
    """Rows ``[index·m/count, (index+1)·m/count)`` of every tensor of a batch of ``m`` rows: worker
    ``index``'s share of a global batch (a last, partial batch is split as evenly as it goes)."""
    rows = tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]
    start, stop = index * rows // count, (index + 1) * rows // count
    return tf.nest.map_structure(lambda tensor: tensor[start:stop], batch)


def user_histories(config, schema: FeatureSchema) -> Optional[UserHistories]:
    """The per-user history store of ``config.data.user_histories`` (None without one): the rows then hold
    only the user and the time, and make_dataset cuts the sequences the store fills."""
    block = config.data.get("user_histories")
    return UserHistories.from_config(block, schema, base_dir=config.data.dir) if block else None


def _distributed(strategy, files, schema, config, training, histories=None):
    """Global batches of ``train.batch_size`` (eval: ``train.eval_batch_size``) as per-replica batches of
    ``strategy``.

    Training input is split by ``shard_policy``. Eval input is always split by data, so that every eval row
    is counted exactly once whatever the files' sizes. Data splitting relies on ``make_dataset`` giving
    every worker the same batches (it is deterministic for a given seed).
    """
    global_batch = config.train.batch_size if training else config.train.eval_batch_size
    by_file = training and shard_policy(len(files), num_workers()) == "file"
    # config.data.ragged: sequences reach the model as tf.RaggedTensor (serving stays padded + _length).
    ragged = bool(config.data.get("ragged", False))

    def dataset_fn(context: tf.distribute.InputContext):
        per_replica = context.get_per_replica_batch_size(global_batch)
        if by_file:
            return make_dataset(files, schema, per_replica, training=training,
                                shuffle_buffer=config.train.shuffle_buffer, seed=config.train.seed,
                                input_context=context, ragged=ragged, user_histories=histories)
        dataset = make_dataset(files, schema, global_batch, training=training,
                               shuffle_buffer=config.train.shuffle_buffer, seed=config.train.seed, ragged=ragged,
                               user_histories=histories)
        if context.num_input_pipelines > 1:
            def own_slice(*batch):
                return worker_slice(batch, context.input_pipeline_id, context.num_input_pipelines)

            dataset = dataset.map(own_slice)
        return dataset.rebatch(per_replica, drop_remainder=training)

    if training and num_workers() > 1:
        logging.info("%s: training input split by %s (%d files, %d workers)", task_name(),
                     "file" if by_file else "data", len(files), num_workers())
    return strategy.distribute_datasets_from_function(dataset_fn)


class EvalInput:
    """The eval split as distributed batches and its step count, built at the first evaluation instead of
    before the first training step: opening, reading and counting the eval files took about 0.15 s of
    two_tower's 1.9 s to its first step on MovieLens (bench/RESULTS.md, time to first step)."""

    def __init__(self, strategy, files, schema: FeatureSchema, config, histories=None):
        self._strategy, self._files, self._schema, self._config = strategy, files, schema, config
        self._histories = histories

    @functools.cached_property
    def data(self):
        return _distributed(self._strategy, self._files, self._schema, self._config, training=False,
                            histories=self._histories)

    @functools.cached_property
    def steps(self) -> int:
        # steps_per_execution > 1 needs a step count even for a finite eval set. eval_steps is a cap: asked for
        # more batches than the split holds, Keras' evaluate runs out of data inside its first multi-step call
        # and returns no metrics at all, so only the first eval_steps batches' records are counted.
        train = self._config.train
        limit = train.eval_steps * train.eval_batch_size if train.eval_steps else None
        return -(-count_records(self._files, limit=limit) // train.eval_batch_size)


def train_and_evaluate(config, model_dir: str, strategy=None, verbose: int = 1, *, mixed_precision: str = "none",
                       jit_compile: bool = False, callbacks=()) -> dict:
    """Trains ``config`` for ``config.train.steps`` steps into ``model_dir`` and returns eval metrics
    ``{"loss": …, "<task>": {"auc": …, "logloss": …}}``.

    ``mixed_precision``: ``none``, ``mixed_float16`` (dynamic loss scaling) or ``mixed_bfloat16``: the model
    computes in 16 bits and keeps float32 variables. ``jit_compile``: XLA-compiles the train and eval steps.
    ``callbacks``: more Keras callbacks for ``fit``, after the loop's own.
    ``config.train.mode``: ``batch`` (default) or ``streaming`` (time windows in order, each evaluated before it
    is trained on; ``tfrecsys.train.streaming``, which returns the metrics averaged over windows).
    Under several workers (TF_CONFIG) every worker calls this with the same arguments; ``model_dir`` must be
    on storage all of them see, and only the chief writes there (checkpoints, TensorBoard logs,
    eval_metrics.json). A worker restarted after a failure resumes, with the others, from the last backup.
    """
    strategy = strategy or strategy_from_environment()
    check_jit_compile(strategy, jit_compile)
    check_ragged_input(strategy, config)
    mode = config.train.get("mode", "batch")
    if mode not in ("batch", "streaming"):
        raise ValueError(f"config.train.mode must be 'batch' or 'streaming', got {mode!r}")
    if mode == "streaming" and config.train.get("ema_momentum", 0.0):
        # Keras' fit puts the average in the weights when it ends, and streaming calls fit once per window.
        raise ValueError("config.train.ema_momentum (weight averaging) works in batch mode only; set it to 0 with "
                         "config.train.mode 'streaming'")
    with precision_policy(mixed_precision):
        if mode == "streaming":
            # Imported here: streaming builds on this module's pieces.
            from tfrecsys.train.streaming import train_streaming

            return train_streaming(config, model_dir, strategy, verbose, jit_compile, list(callbacks))
        return _train_and_evaluate(config, model_dir, strategy, verbose, jit_compile, list(callbacks))


def _train_and_evaluate(config, model_dir: str, strategy, verbose: int, jit_compile: bool, extra_callbacks) -> dict:
    tf.keras.utils.set_random_seed(config.train.seed)
    schema = FeatureSchema.from_config(config.features)
    tasks = tasks_from_config(config.tasks, schema)
    train_files, eval_files = data_files(config)
    # Built once, eagerly and outside the strategy scope: its tables are constants of the input pipeline.
    histories = user_histories(config, schema)
    row_features = histories.row_features(schema.inputs + schema.labels) if histories else None
    check_schema(train_files[0], schema, row_features)
    check_schema(eval_files[0], schema, row_features)

    steps, per_loop = config.train.steps, min(config.train.steps_per_loop, config.train.steps)
    if steps % per_loop:
        raise ValueError(f"config.train.steps ({steps}) must be a multiple of config.train.steps_per_loop "
                         f"({per_loop})")
    replicas = strategy.num_replicas_in_sync
    if config.train.batch_size % replicas:
        raise ValueError(f"config.train.batch_size ({config.train.batch_size}) is the global batch and must be a "
                         f"multiple of the {replicas} replicas in sync (workers × devices per worker)")
    with strategy.scope():
        model = build_and_compile(config, schema, jit_compile=jit_compile)
        create_variables(model, schema)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        manager = tf.train.CheckpointManager(checkpoint, worker_dir(os.path.join(model_dir, CHECKPOINT_SUBDIR)),
                                             max_to_keep=config.train.max_checkpoints)
        # Every worker restores the chief's newest checkpoint: the others' scratch copies are removed after
        # each save, and all replicas must start from the same state.
        latest = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_SUBDIR))
        if latest:
            checkpoint.restore(latest)
            logging.info("%s: resuming from %s", task_name(), latest)
    done = int(model.optimizer.iterations.numpy())
    train_data = _distributed(strategy, train_files, schema, config, training=True, histories=histories)
    eval_input = EvalInput(strategy, eval_files, schema, config, histories)

    if done < steps and not callbacks_lib.stopped_early(model_dir):
        # BackupAndRestore comes first: it restores the last loop's state (weights, optimizer, loop number)
        # before the others start, and backs up before the checkpoint of each loop is written.
        loop_callbacks = [callbacks_lib.BackupEveryLoop(os.path.join(model_dir, BACKUP_SUBDIR), per_loop),
                          callbacks_lib.StartLogger(steps, task_name()),
                          callbacks_lib.ThroughputLogger(config.train.batch_size, per_loop),
                          callbacks_lib.CheckpointEveryLoop(manager, scratch=not is_chief())]
        # Before TensorBoard: it writes the val_* metrics these add to each loop's logs.
        loop_callbacks += callbacks_lib.evaluation_callbacks(config.train, model_dir, checkpoint, eval_input)
        if num_workers() == 1:
            loop_callbacks.append(callbacks_lib.StopOnInterrupt(loop_callbacks[0], manager))
        if is_chief():
            loop_callbacks.append(tf.keras.callbacks.TensorBoard(os.path.join(model_dir, "logs")))
        loop_callbacks += extra_callbacks
        with naming_lost_peers(), naming_bad_files(train_files + eval_files, schema, row_features):
            model.fit(train_data, epochs=steps // per_loop, initial_epoch=done // per_loop,
                      steps_per_epoch=per_loop, callbacks=loop_callbacks, verbose=verbose)
    else:
        logging.info("checkpoint is at step %d of %d: nothing left to train", done, steps)

    with naming_lost_peers(), naming_bad_files(eval_files, schema, row_features):
        # Keras' fit ends by putting the average in the weights; a run with nothing left to train has the
        # trained weights of its checkpoint.
        with callbacks_lib.averaged_weights(model):
            raw = model.evaluate(eval_input.data, steps=eval_input.steps, return_dict=True, verbose=0)
    metrics = metrics_by_task(raw, [t.name for t in tasks])
    if is_chief():
        with tf.io.gfile.GFile(os.path.join(model_dir, EVAL_METRICS_FILE), "w") as f:
            json.dump({"step": int(model.optimizer.iterations.numpy()), **metrics}, f, indent=2, sort_keys=True)
    logging.info("eval: %s", metrics)
    return metrics


def metrics_by_task(raw: dict, task_names) -> dict:
    """Groups Keras' flat metric names by task: ``<task>_auc`` (several outputs) or ``auc`` (one output)
    become ``{task: {"auc": …}}``; names that belong to no task (a model's own metrics) stay at the top."""
    out = {"loss": float(raw["loss"])}
    claimed = {"loss"}
    for task in task_names:
        prefix = f"{task}_"
        values = {k[len(prefix):]: float(v) for k, v in raw.items() if k.startswith(prefix)}
        claimed.update(k for k in raw if k.startswith(prefix))
        values.pop("loss", None)
        out[task] = values
    rest = {k: float(v) for k, v in raw.items() if k not in claimed}
    if len(task_names) == 1:
        out[task_names[0]].update(rest)
    else:
        out.update(rest)
    return out
