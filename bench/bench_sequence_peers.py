"""Behaviour-sequence rankers on Taobao UserBehavior: our mean-pooling dnn, DIN and DIEN (± auxiliary loss)
against DeepCTR 0.9.4's DIN and DIEN on the same rows: AUC, GAUC, logloss, steady examples/s and time to the
first training step.

    make peers-env && TF_USE_LEGACY_KERAS=1 .venv-peers/bin/python -m bench.bench_sequence_peers
    .venv/bin/python -m bench.bench_sequence_peers --runs=ours:din,ours:dien   # ours only (no DeepCTR)
    TF_USE_LEGACY_KERAS=1 .venv-peers/bin/python -m bench.bench_sequence_peers --runs=ours:din,peer:din \
        --mixed_precision=none,mixed_bfloat16        # ours at float32, then bfloat16 compute, then DeepCTR's

Data: the protocol of ../shared/reference/peer-baselines.md §1 (``taobao_rows``): 'pv' events of
``UserBehavior_head84474.csv`` (the file's last user dropped), per user in time order; for each position
t ≥ 1 the previous ≤ 50 items and categories are the history, the real item at t the positive, a uniform
random catalogue item (≠ the real one) the negative; each user's last event is the test pair; DIEN's negative
history is one uniform random item per history position. Train 148,138 rows, test 1,624.

Sizes as DeepCTR's defaults there: embeddings 16, DNN (256, 128, 64) relu, DIN attention (80, 40) Dice,
DIEN attention (64, 16) Dice with softmax weights, AUGRU, α = 1; Adam 1e-3, batch 256, 2 epochs, shuffled;
L2 1e-6 over the whole embedding tables (DeepCTR's ``l2_reg_embedding``; ``--embedding_l2`` for ours).
By default ours run with their own settings as chosen on a validation split (bench/RESULTS.md, "DIEN's own
settings, the reset-before GRU and Dice's moments over padding"; ``BENCH_DEFAULTS``): the model's embedding
initialiser (truncated N(0, 0.05²)), the paper's AUGRU trained, the auxiliary loss averaged over valid pairs,
Keras' gate bias 0, with DeepCTR's embedding L2 and its reset-before GRU form (``--gru_reset_after=0``). Each of
DeepCTR's other choices is a flag (``--embedding_init_stddev``, ``--gru_variant``, ``--evolution_trainable``,
``--aux_normalization``, ``--gru_gate_bias``, ``--attention_moments``; ``DEEPCTR_OPTIONS`` lists them all).
Before 2026-12-07 20:30 UTC the bench gave ours DeepCTR's settings by default (DIEN + aux −0.028 ± 0.009 AUC
against DeepCTR with them, −0.003 ± 0.002 with its own, seeds 0-4).
Ours train through the model base's step (``RecModel.train_step``) with the house ``steps_per_execution``
of 20 and ``tfrecsys-train``'s Adam (``tfrecsys.train.adam``: Keras' algorithm, one fused kernel per variable;
the runs before 2026-12-07 03:30 UTC had Keras' own update ops), their variables created before ``fit`` as
``tfrecsys-train`` does (``create_variables``), and both sides get the same input path: Keras slicing
shuffled batches out of the in-memory arrays (an element-wise tf.data shuffle cost 5.4 against 2.0 CPU-ms per
batch, measured). DeepCTR's DIEN needs TF1 graph mode and a 6-name shim (``deepctr_dien_shim``), so every
run is a fresh process (``--one``), ours and the peer's alternating.

Epochs chosen on validation (``--select_epoch=validation --max_epochs=3``): each user's second-to-last event
pair (its positive and negative, the pair just before its test pair) is held out of the training rows for both
stacks (``hold_out_validation``: 146,514 train / 1,624 validation rows, one pair for each of the 812 test
users); each run trains ``--max_epochs`` epochs, predicts the validation and test rows after every epoch
(outside the clocks), and reports the test figures of the epoch with the best validation AUC (the earliest of
equal ones), with the per-epoch curve and the test figures after epoch 2 in its JSON. The same rule for both
stacks; the default (``--select_epoch=none``) is the protocol above, unchanged: 2 epochs on all 148,138 rows.
``--summarize --max_epochs=N`` re-chooses among the first N epochs of longer runs (Keras draws epoch k's
shuffle the same whatever the epoch count, so the first N epochs of a longer run are a run of N).

Timings: steady ex/s = training rows of epoch 2 over its wall time (Keras epoch callbacks), and the CPU
milliseconds per step of that epoch (``time.process_time``: steadier than wall time on a shared machine);
first step = model construction + compile (+ ``create_variables`` for ours) + Keras' set-up of the arrays +
the first train-function call, wall and CPU seconds, from a process whose TensorFlow is imported and whose
data are built. That first call runs one step on both sides (ours: ``tfrecsys.models.execution`` runs the
first call of a multi-step function as one step; before it, ours ran 20 there).

``--mixed_precision`` runs each of ours once per listed Keras policy, one after the other (``none``: float32;
``mixed_bfloat16``: bfloat16 compute with float32 variables, set as ``tfrecsys-train --mixed_precision`` sets
it); ``--peer_mixed_precision`` does the same for DeepCTR's runs (Keras' global policy around their
construction and training).
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Optional

import numpy as np

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "datasets",
                    "taobao-user-behavior", "UserBehavior_head84474.csv")
HISTORY_LEN, EMBEDDING_DIM, BATCH, EPOCHS, LEARNING_RATE = 50, 16, 256, 2, 1e-3
DNN_UNITS = (256, 128, 64)


@dataclasses.dataclass(frozen=True)
class OurOptions:
    """Settings of our models that DeepCTR's DIN and DIEN fix in their code; the defaults are our models' own.

    ``embedding_l2``: L2 over the whole embedding tables (``EmbeddingTables.regularize``, config
    ``model.embedding_l2``); ``embedding_init_stddev``: the tables' rows start N(0, stddev²)
    (``EmbeddingTables.initialize_normal``; 0: the model's truncated N(0, 0.05²)), seeded by
    ``embedding_init_seed`` (None: the global seed; an integer: every table with it, as DeepCTR);
    ``aux_normalization``, ``gru_gate_bias``, ``evolution_trainable``, ``gru_variant``, ``recurrence_xla``,
    ``gru_reset_after``, ``attention_moments``: DIEN's config keys of the same names under ``model.``.
    """
    embedding_l2: float = 0.0
    aux_normalization: str = "valid_pairs"
    gru_gate_bias: float = 0.0
    embedding_init_stddev: float = 0.0
    embedding_init_seed: Optional[int] = None
    evolution_trainable: bool = True
    gru_variant: str = "augru"
    recurrence_xla: bool = True
    gru_reset_after: bool = True
    attention_moments: str = "valid"

    def flags(self) -> list:
        """The command-line flags that give these options to a ``--one`` run."""
        return [f"--embedding_l2={self.embedding_l2}", f"--aux_normalization={self.aux_normalization}",
                f"--gru_gate_bias={self.gru_gate_bias}", f"--embedding_init_stddev={self.embedding_init_stddev}",
                f"--embedding_init_seed={-1 if self.embedding_init_seed is None else self.embedding_init_seed}",
                f"--evolution_trainable={int(self.evolution_trainable)}", f"--gru_variant={self.gru_variant}",
                f"--recurrence_xla={int(self.recurrence_xla)}", f"--gru_reset_after={int(self.gru_reset_after)}",
                f"--attention_moments={self.attention_moments}"]


# DeepCTR 0.9.4's DIN and DIEN as they run on TF 2.16, and what the bench gives ours by default: l2_reg_embedding
# 1e-6; DIEN's auxiliary loss a reduce_mean over [batch, T − 1] with padding counting 0; tf.compat.v1 GRUCell gate
# biases 1; SparseFeat's embeddings N(0, 1e-4²) drawn with seed 2020 for every table (ours: the run's seed unless
# --embedding_init_seed); its AUGRU (VecAttGRUCell) scales the keep gate and its weights are never trained
# (Keras does not track them); its GRUs are tf.compat.v1 GRUCell's form, the candidate reset before its matmul
# with joint glorot kernels over [x ; h]; its attention's Dice takes its moments over every [batch, T] slot.
# The bench gives ours all but the seed 2020 (ours: the run's seed), the reset-before GRUs and Dice's moments
# over padding, which are options here (--gru_reset_after, --attention_moments) measured in bench/RESULTS.md.
DEEPCTR_OPTIONS = OurOptions(embedding_l2=1e-6, aux_normalization="grid", gru_gate_bias=1.0,
                             embedding_init_stddev=1e-4, embedding_init_seed=2020, evolution_trainable=False,
                             gru_variant="augru_keep", gru_reset_after=False, attention_moments="every_slot")
# What the bench gives ours by default: their own settings with DeepCTR's embedding L2 and reset-before GRUs,
# the choice of the validation split for DIN and DIEN alike (bench/RESULTS.md, "DIEN's own settings, ...").
BENCH_DEFAULTS = OurOptions(embedding_l2=1e-6, gru_reset_after=False)
DEFAULT_RUNS = ("ours:mean_pooling", "ours:din", "peer:din", "ours:dien", "peer:dien", "ours:dien_no_aux",
                "peer:dien_no_aux")


def taobao_rows(path: str = DATA, data_seed: int = 0) -> tuple[dict, dict, dict]:
    """(train, test, largest id of each id column): column dicts of the protocol above, ids remapped to 1..n
    (0 pads, as DeepCTR masks)."""
    raw = np.genfromtxt(path, delimiter=",", dtype=None, encoding="utf-8",
                        names=("user", "item", "category", "behavior", "timestamp"))
    raw = raw[raw["behavior"] == "pv"]
    raw = raw[raw["user"] != raw["user"][-1]]  # the head may cut the last user's events off
    item_ids, items = np.unique(raw["item"], return_inverse=True)
    category_ids, categories = np.unique(raw["category"], return_inverse=True)
    user_ids, users = np.unique(raw["user"], return_inverse=True)
    items, categories, users = items + 1, categories + 1, users + 1
    category_of = np.zeros(len(item_ids) + 1, np.int64)
    category_of[items] = categories
    rng = np.random.default_rng(data_seed)
    order = np.lexsort((np.arange(len(raw)), raw["timestamp"], users))
    splits = {"train": [], "test": []}
    for user in np.unique(users):
        events = order[users[order] == user]
        for t in range(1, len(events)):
            start = max(0, t - HISTORY_LEN)
            history = items[events[start:t]]
            negative = int(rng.integers(1, len(item_ids) + 1))
            while negative == items[events[t]]:
                negative = int(rng.integers(1, len(item_ids) + 1))
            negative_history = rng.integers(1, len(item_ids) + 1, len(history))
            split = "test" if t == len(events) - 1 else "train"
            for target, label in ((int(items[events[t]]), 1.0), (negative, 0.0)):
                splits[split].append((user, target, history, negative_history, label))
    largest = {"user_id": len(user_ids), "item_id": len(item_ids), "cate_id": len(category_ids)}
    return _columns(splits["train"], category_of), _columns(splits["test"], category_of), largest


def _columns(rows: list, category_of: np.ndarray) -> dict:
    def padded(histories):
        out = np.zeros((len(histories), HISTORY_LEN), np.int64)
        for row, history in enumerate(histories):
            out[row, :len(history)] = history
        return out

    hist_item_id = padded([r[2] for r in rows])
    neg_item_id = padded([r[3] for r in rows])
    item_id = np.array([r[1] for r in rows], np.int64)
    return {"user_id": np.array([r[0] for r in rows], np.int64), "item_id": item_id,
            "cate_id": category_of[item_id], "hist_item_id": hist_item_id, "hist_cate_id": category_of[hist_item_id],
            "neg_hist_item_id": neg_item_id, "neg_hist_cate_id": category_of[neg_item_id],
            "seq_length": np.array([len(r[2]) for r in rows], np.int64), "label": np.array([r[4] for r in rows],
                                                                                          np.float32)}


def hold_out_validation(train: dict) -> tuple[dict, dict]:
    """(train without the validation rows, validation): each user's second-to-last event's pair (the positive
    and its negative just before the user's test pair, the last pair ``taobao_rows`` gives the user's training
    rows) held out, so the validation rows are built as the test rows are, one event earlier, and no training
    row holds a validation event as target or in its history. Users with one training pair give it up."""
    users = train["user_id"]
    block_ends = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
    if len(block_ends) != len(np.unique(users)):
        raise ValueError("the training rows must hold each user's rows together, in time order (taobao_rows)")
    held_out = np.zeros(len(users), bool)
    held_out[block_ends] = held_out[block_ends - 1] = True
    positives, negatives = block_ends - 1, block_ends
    if not (np.all(train["label"][positives] == 1) and np.all(train["label"][negatives] == 0)
            and np.array_equal(train["hist_item_id"][positives], train["hist_item_id"][negatives])
            and np.all(users[positives] == users[negatives])):
        raise ValueError("each user's training rows must end with a (positive, negative) pair of one event")
    return ({k: v[~held_out] for k, v in train.items()}, {k: v[held_out] for k, v in train.items()})


def chosen_epoch(curve: list[dict], max_epochs: Optional[int] = None) -> int:
    """The 1-based epoch of ``curve`` (one ``{"validation": metrics, "test": metrics}`` per epoch) with the best
    validation AUC among its first ``max_epochs`` (all if None); the earliest of equal ones."""
    aucs = [epoch["validation"]["auc"] for epoch in curve[:max_epochs]]
    return int(np.argmax(aucs)) + 1


def ranking_metrics(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> dict:
    """AUC (ties count ½), GAUC (per-user AUC weighted by rows, users of one class skipped), logloss."""
    def auc(y, p):
        ranks = np.argsort(np.argsort(p, kind="stable"), kind="stable").astype(np.float64)
        for value in np.unique(p[np.r_[False, np.diff(np.sort(p)) == 0]]):  # average the ranks of ties
            ranks[p == value] = ranks[p == value].mean()
        positives = y == 1
        n_pos, n_neg = positives.sum(), (~positives).sum()
        return (ranks[positives].sum() - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg)

    per_user = [(len(y), auc(y, scores[users == u])) for u in np.unique(users)
                for y in [labels[users == u]] if 0 < y.sum() < len(y)]
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    return {"auc": float(auc(labels, scores)),
            "gauc": float(np.average([a for _, a in per_user], weights=[n for n, _ in per_user])),
            "logloss": float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))}


def our_model(name: str, vocabulary: dict, options: OurOptions = OurOptions()):
    """Our model ``name`` (mean_pooling, din, din_softmax, dien, dien_inner_product, dien_no_aux) over the
    protocol's columns, with ``options`` (the models' own defaults unless given)."""
    from tfrecsys.features.schema import FeatureSchema
    from tfrecsys.models.dien import DIEN
    from tfrecsys.models.din import DIN
    from tfrecsys.models.dnn import DNNRanker
    from tfrecsys.models.tasks import tasks_from_config

    def id_feature(largest_id):
        return dict(kind="id", num_buckets=largest_id + 1, embedding_dim=EMBEDDING_DIM)

    features = {"user_id": id_feature(vocabulary["user_id"]), "item_id": id_feature(vocabulary["item_id"]),
                "cate_id": id_feature(vocabulary["cate_id"]),
                "hist_item_id": dict(kind="sequence", shares="item_id", max_len=HISTORY_LEN),
                "hist_cate_id": dict(kind="sequence", shares="cate_id", max_len=HISTORY_LEN,
                                     aligned_with="hist_item_id"),
                "neg_hist_item_id": dict(kind="sequence", shares="item_id", max_len=HISTORY_LEN,
                                         aligned_with="hist_item_id", training_only=True),
                "neg_hist_cate_id": dict(kind="sequence", shares="cate_id", max_len=HISTORY_LEN,
                                         aligned_with="hist_item_id", training_only=True),
                "label": dict(kind="label")}
    schema = FeatureSchema.from_config(features)
    tasks = tasks_from_config({"score": dict(label="label", metrics=())}, schema)
    history = ("hist_item_id", "hist_cate_id")
    if name == "mean_pooling":
        mean_schema = FeatureSchema.from_config({k: v for k, v in features.items() if not k.startswith("neg_")})
        model = DNNRanker(mean_schema, tasks, hidden_units=DNN_UNITS, name="mean_pooling")
    elif name in ("din", "din_softmax"):
        # din: the paper's raw weights, as DeepCTR's; din_softmax: softmax-normalised, as configs/din_taobao.py.
        model = DIN(schema, tasks, history=history, attention_units=(80, 40), hidden_units=DNN_UNITS,
                    attention_normalization="softmax" if name == "din_softmax" else "none", name=name)
    else:
        model = DIEN(schema, tasks, history=history, negative_history=("neg_hist_item_id", "neg_hist_cate_id"),
                     aux_weight=0.0 if name == "dien_no_aux" else 1.0,
                     aux_net="inner_product" if name == "dien_inner_product" else "mlp", attention_units=(64, 16),
                     hidden_units=DNN_UNITS, aux_normalization=options.aux_normalization,
                     gru_gate_bias=options.gru_gate_bias, evolution_trainable=options.evolution_trainable,
                     gru_variant=options.gru_variant, recurrence_xla=options.recurrence_xla,
                     gru_reset_after=options.gru_reset_after, attention_moments=options.attention_moments, name=name)
    if options.embedding_l2:
        model.embeddings.regularize(options.embedding_l2)
    if options.embedding_init_stddev:
        model.embeddings.initialize_normal(options.embedding_init_stddev, options.embedding_init_seed)
    return model


def deepctr_dien_shim():
    """DeepCTR 0.9.4's bundled dynamic_rnn calls 6 private TF names that moved after TF 2.12: re-export them
    (the installed package untouched), as peer-baselines.md "Failures" found."""
    import tensorflow as tf
    from tensorflow.python.ops import array_ops, control_flow_ops
    from tensorflow.python.util import nest

    array_ops.stack, array_ops.unstack = tf.stack, tf.unstack
    control_flow_ops.Assert, control_flow_ops.while_loop, control_flow_ops.cond = (
        tf.debugging.Assert, tf.while_loop, tf.cond)
    nest.is_sequence = nest.is_nested


def peer_model(name: str, vocabulary: dict, seed: int):
    """DeepCTR 0.9.4's DIN or DIEN (AUGRU, with or without the auxiliary loss) with the defaults above.
    ``seed`` goes to DeepCTR's ``seed`` argument: its initialisers take that seed, not the global one, so
    without it every run starts from DeepCTR's default 1024 and only the shuffle order follows ``--seeds``."""
    from deepctr.feature_column import SparseFeat, VarLenSparseFeat
    from deepctr.models import DIEN as PeerDIEN, DIN as PeerDIN

    columns = [SparseFeat(name, vocabulary[name] + 1, embedding_dim=EMBEDDING_DIM)
               for name in ("user_id", "item_id", "cate_id")]
    columns += [VarLenSparseFeat(SparseFeat(f"hist_{name}", vocabulary[name] + 1, embedding_dim=EMBEDDING_DIM,
                                            embedding_name=name), maxlen=HISTORY_LEN, length_name="seq_length")
                for name in ("item_id", "cate_id")]
    if name == "din":
        return PeerDIN(columns, ["item_id", "cate_id"], dnn_hidden_units=DNN_UNITS, att_hidden_size=(80, 40),
                       att_activation="dice", seed=seed)
    negatives = name == "dien"
    if negatives:
        columns += [VarLenSparseFeat(SparseFeat(f"neg_hist_{name}", vocabulary[name] + 1,
                                                embedding_dim=EMBEDDING_DIM, embedding_name=name),
                                     maxlen=HISTORY_LEN, length_name="seq_length") for name in ("item_id", "cate_id")]
    return PeerDIEN(columns, ["item_id", "cate_id"], dnn_hidden_units=DNN_UNITS, gru_type="AUGRU",
                    use_negsampling=negatives, att_hidden_units=(64, 16), att_activation="dice",
                    att_weight_normalization=True, alpha=1.0, seed=seed)


def run_one(side: str, name: str, seed: int, precision: str = "none", options: OurOptions = BENCH_DEFAULTS,
            select_epoch: str = "none", max_epochs: int = 3) -> dict:
    """Trains one model in this process under the Keras precision policy ``precision`` (a
    ``tfrecsys.train.strategy.PRECISION_POLICIES`` key) and returns its figures; ``options`` are our models'
    (DeepCTR's are always its own, ``DEEPCTR_OPTIONS``). ``select_epoch="validation"``: the validation split
    held out of the training rows, up to ``max_epochs`` epochs, and the test figures of the epoch of best
    validation AUC (``"none"``: the protocol's fixed ``EPOCHS`` on every training row)."""
    import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)

    from tfrecsys.train.strategy import precision_policy

    with precision_policy(precision):
        return {**_run_one(side, name, seed, options, select_epoch, max_epochs), "precision": precision}


def _run_one(side: str, name: str, seed: int, options: OurOptions, select_epoch: str, max_epochs: int) -> dict:
    import tensorflow as tf

    from tfrecsys.train.adam import Adam
    from tfrecsys.train.loop import create_variables

    train, test, vocabulary = taobao_rows()
    validation, epochs = None, EPOCHS
    if select_epoch == "validation":
        train, validation = hold_out_validation(train)
        epochs = max_epochs
    graph_mode = side == "peer" and name.startswith("dien")
    if graph_mode:
        deepctr_dien_shim()
        tf.compat.v1.disable_eager_execution()
    tf.keras.utils.set_random_seed(seed)
    epoch_times, epoch_cpu_times, first_step, curve = [], [], {}, []
    score = None  # rows -> the model's scores, once the model is built

    def metrics(rows):
        scores = np.ravel(score(rows)).astype(np.float32)  # a bfloat16 policy's output arrives as bfloat16
        return ranking_metrics(rows["label"], scores, rows["user_id"])

    class Clock(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.started)
            epoch_cpu_times.append(time.process_time() - self.cpu_started)

        def on_train_batch_end(self, batch, logs=None):
            first_step.setdefault("seconds", time.perf_counter() - built_from)
            first_step.setdefault("cpu_seconds", time.process_time() - cpu_built_from)

    class EvaluateEachEpoch(tf.keras.callbacks.Callback):
        """Validation and test metrics after every epoch; after ``Clock`` in the callbacks, so outside its
        clocks."""

        def on_epoch_end(self, epoch, logs=None):
            curve.append({"epoch": epoch + 1, "validation": metrics(validation), "test": metrics(test)})

    callbacks = [Clock()] + ([EvaluateEachEpoch()] if validation is not None else [])

    if side == "ours":
        inputs = {k: v for k, v in train.items() if k not in ("label", "seq_length")}
        inputs["hist_item_id_length"] = train["seq_length"]
        if name == "mean_pooling":
            inputs = {k: v for k, v in inputs.items() if not k.startswith("neg_")}
        built_from, cpu_built_from = time.perf_counter(), time.process_time()
        model = our_model(name, vocabulary, options)
        model.compile(optimizer=Adam(LEARNING_RATE), steps_per_execution=20)  # tfrecsys-train's "adam"
        create_variables(model, model.schema)  # as tfrecsys-train does: the train step is traced once
        # The input path DeepCTR gets: Keras slicing shuffled batches out of in-memory arrays.

        def score(rows):
            serving = {k: v for k, v in rows.items() if k in model.serving_features}
            serving["hist_item_id_length"] = rows["seq_length"]
            return model.predict(serving, batch_size=1024, verbose=0)["score"]

        model.fit(inputs, {"label": train["label"]}, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=True,
                  callbacks=callbacks)
    else:
        built_from, cpu_built_from = time.perf_counter(), time.process_time()
        model = peer_model(name, vocabulary, seed)
        optimizer = tf.keras.optimizers.legacy.Adam(LEARNING_RATE) if graph_mode else tf.keras.optimizers.Adam(
            LEARNING_RATE)
        model.compile(optimizer, "binary_crossentropy")
        names = model.input_names  # the Input layers' names (graph-mode tensor names carry suffixes)

        def score(rows):
            return model.predict({k: rows[k] for k in names}, batch_size=1024)

        model.fit({k: train[k] for k in names}, train["label"], batch_size=BATCH, epochs=epochs, verbose=0,
                  shuffle=True, callbacks=callbacks)
    rows = len(train["label"])
    figures = {"side": side, "model": name, "seed": seed, "select_epoch": select_epoch, "epochs": epochs}
    if validation is None:
        figures.update(metrics(test))
    else:
        best = chosen_epoch(curve)
        figures.update(curve[best - 1]["test"], chosen_epoch=best, curve=curve,
                       validation_rows=len(validation["label"]), fixed_epochs_test=curve[EPOCHS - 1]["test"])
    # Epoch 2 is the steady epoch whatever the count: the first carries the tracing, later ones are alike.
    return {**figures, "steady_examples_per_s": rows / epoch_times[1],
            "steady_cpu_ms_per_step": 1000 * epoch_cpu_times[1] / -(-rows // BATCH),
            "first_step_s": first_step["seconds"], "first_step_cpu_s": first_step["cpu_seconds"],
            "load": os.getloadavg()[0], "train_rows": rows, "test_rows": len(test["label"]),
            **dataclasses.asdict(options if side == "ours" else DEEPCTR_OPTIONS)}


def run_line(r: dict) -> str:
    """One run's figures on one line (under --select_epoch=validation, the chosen epoch's test figures, then a
    line with the epoch and the validation and test AUC after each epoch)."""
    line = (f"{r['side'] + ':' + r['model']:22s} {r.get('precision', 'none'):14s} seed {r['seed']}  AUC {r['auc']:.4f}  GAUC {r['gauc']:.4f}  "
            f"logloss {r['logloss']:.4f}  steady {r['steady_examples_per_s']:8.0f} ex/s "
            f"({r['steady_cpu_ms_per_step']:.1f} CPU-ms/step)  first step {r['first_step_s']:5.1f} s "
            f"({r['first_step_cpu_s']:.1f} CPU-s)  load {r['load']:.1f}")
    if "curve" in r:
        line += (f"\n    epoch {r['chosen_epoch']} of {len(r['curve'])} chosen; validation AUC per epoch "
                 + " ".join(f"{e['validation']['auc']:.4f}" for e in r["curve"]) + "; test AUC per epoch "
                 + " ".join(f"{e['test']['auc']:.4f}" for e in r["curve"]))
    return line


def reselect(r: dict, max_epochs: int) -> dict:
    """A --select_epoch=validation run's figures as if it had stopped after ``max_epochs`` epochs (the first
    epochs of a longer run are the same: Keras draws epoch k's shuffle the same whatever the count)."""
    if "curve" not in r or max_epochs >= len(r["curve"]):
        return r
    best = chosen_epoch(r["curve"], max_epochs)
    return {**r, **r["curve"][best - 1]["test"], "chosen_epoch": best, "curve": r["curve"][:max_epochs],
            "epochs": max_epochs}


def mean_and_error(values, sign: str = "", digits: int = 4) -> str:
    """``mean ± standard error`` (sample standard deviation over √n); the mean alone for one value. ``sign``
    ``"+"`` prints the mean's sign (for differences)."""
    values = np.asarray(values, np.float64)
    mean = f"{values.mean():{sign}.{digits}f}"
    return mean if len(values) < 2 else f"{mean} ± {values.std(ddof=1) / np.sqrt(len(values)):.{digits}f}"


def summary(results: list[dict]) -> list[str]:
    """Per side:model and precision, mean ± standard error over its seeds of AUC, GAUC, logloss and the speeds;
    per model run on both sides, the paired differences ours − DeepCTR over the seeds both ran (the seed's
    shuffle and initialisation draw is shared noise, so pairs are the sharper comparison) and the per-seed
    speed ratios, each of our precisions against DeepCTR's first-run precision (float32 unless
    --peer_mixed_precision says other)."""
    lines, runs = [], {}
    for r in results:
        runs.setdefault((r["side"], r["model"], r.get("precision", "none")), {})[r["seed"]] = r
    for (side, model, precision), by_seed in runs.items():
        rows = list(by_seed.values())
        lines.append(f"{side}:{model} ({precision}) over {len(rows)} seed(s) {sorted(by_seed)}: "
                     + ", ".join(f"{metric} {mean_and_error([r[metric] for r in rows])}"
                                 for metric in ("auc", "gauc", "logloss"))
                     + f", steady ex/s {np.mean([r['steady_examples_per_s'] for r in rows]):.0f}, "
                     f"CPU-ms/step {np.mean([r['steady_cpu_ms_per_step'] for r in rows]):.1f}, "
                     f"first step {np.mean([r['first_step_s'] for r in rows]):.1f} s "
                     f"({np.mean([r['first_step_cpu_s'] for r in rows]):.1f} CPU-s)")
        if all("curve" in r for r in rows):
            chosen = ", ".join(f"{seed}: {by_seed[seed]['chosen_epoch']}" for seed in sorted(by_seed))
            chosen_validation = [r["curve"][r["chosen_epoch"] - 1]["validation"]["auc"] for r in rows]
            lines.append(f"    chosen epoch by seed {chosen}; validation AUC there "
                         f"{mean_and_error(chosen_validation)}; test AUC after the fixed {EPOCHS} epochs "
                         f"{mean_and_error([r['fixed_epochs_test']['auc'] for r in rows])}")
    for (side, model, precision), ours in runs.items():
        peer_key = next((key for key in runs if key[:2] == ("peer", model)), None) if side == "ours" else None
        peer = runs[peer_key] if peer_key else {}
        seeds = sorted(set(ours) & set(peer))
        if not seeds:
            continue
        pairs = [(ours[seed], peer[seed]) for seed in seeds]
        lines.append(f"{model}: ours ({precision}) − DeepCTR ({peer_key[2]}) over {len(seeds)} paired seed(s): "
                     + ", ".join(f"{metric} {mean_and_error([o[metric] - p[metric] for o, p in pairs], '+')}"
                                 for metric in ("auc", "gauc", "logloss"))
                     + "; ours/DeepCTR steady ex/s "
                     + mean_and_error([o["steady_examples_per_s"] / p["steady_examples_per_s"] for o, p in pairs],
                                    digits=2)
                     + "x, DeepCTR/ours CPU-ms per step "
                     + mean_and_error([p["steady_cpu_ms_per_step"] / o["steady_cpu_ms_per_step"] for o, p in pairs],
                                    digits=2)
                     + "x")
        if all("fixed_epochs_test" in r for pair in pairs for r in pair):
            lines.append(f"    after the fixed {EPOCHS} epochs (same runs): AUC ours − DeepCTR "
                         + mean_and_error([o["fixed_epochs_test"]["auc"] - p["fixed_epochs_test"]["auc"]
                                           for o, p in pairs], "+"))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                        help="comma-separated side:model runs, in order (side ours|peer; model mean_pooling, "
                             "din, din_softmax (attention weights softmax-normalised), dien (MLP auxiliary net), "
                             "dien_inner_product, dien_no_aux; peers: din, dien, dien_no_aux)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds; each run repeats per seed, the runs of one seed before the "
                             "next seed's. A seed sets the global seeds (our initialisers, Keras' shuffle order) "
                             "and DeepCTR's seed argument (its initialisers); the rows stay the same (their "
                             "negatives are drawn with data seed 0)")
    parser.add_argument("--mixed_precision", default="none",
                        help="comma-separated Keras precision policies (none, mixed_bfloat16, mixed_float16): each "
                             "of our runs is repeated per policy, in this order (none: float32; mixed_bfloat16: "
                             "bfloat16 compute with float32 variables, as tfrecsys-train --mixed_precision sets it)")
    parser.add_argument("--peer_mixed_precision", default="none",
                        help="the same for DeepCTR's runs (Keras' global policy around their construction and "
                             "training)")
    parser.add_argument("--embedding_l2", type=float, default=BENCH_DEFAULTS.embedding_l2,
                        help="L2 over our models' whole embedding tables (EmbeddingTables.regularize, "
                             "config model.embedding_l2); the default is DeepCTR's l2_reg_embedding, which its "
                             "models get; 0: none")
    parser.add_argument("--aux_normalization", default=BENCH_DEFAULTS.aux_normalization, choices=("grid", "valid_pairs"),
                        help="our DIEN's auxiliary-loss mean (config model.aux_normalization): grid = over every "
                             "(row, t) slot with padding counting 0, DeepCTR's; valid_pairs = over valid "
                             "next-step pairs (the model's and this bench's default)")
    parser.add_argument("--gru_gate_bias", type=float, default=BENCH_DEFAULTS.gru_gate_bias,
                        help="initial gate bias of our DIEN's GRUs (config model.gru_gate_bias): 1 = "
                             "tf.compat.v1 GRUCell's, DeepCTR's; 0 = Keras' (the model's and this bench's "
                             "default)")
    parser.add_argument("--embedding_init_stddev", type=float, default=BENCH_DEFAULTS.embedding_init_stddev,
                        help="our models' embedding rows start N(0, stddev²) (config model.embedding_init_stddev); "
                             "1e-4 is DeepCTR's SparseFeat initialiser; 0 (the model's and this bench's default) "
                             "= the model's truncated N(0, 0.05²)")
    parser.add_argument("--embedding_init_seed", type=int, default=-1,
                        help="the seed of our models' --embedding_init_stddev initialiser, every table the same "
                             f"(DeepCTR's: {DEEPCTR_OPTIONS.embedding_init_seed} for every table in every run); -1 (the "
                             "default): the run's global seed (--seeds)")
    parser.add_argument("--evolution_trainable", type=int, choices=(0, 1), default=int(BENCH_DEFAULTS.evolution_trainable),
                        help="0 keeps our DIEN's interest-evolving GRU's weights at their initial values "
                             "(config model.evolution_trainable=False), as DeepCTR 0.9.4's DIEN runs on TF 2 (its "
                             "AUGRU variables are never tracked by Keras, so never trained); 1 trains them (the "
                             "model's and this bench's default)")
    parser.add_argument("--gru_variant", default=BENCH_DEFAULTS.gru_variant, choices=("augru", "augru_keep"),
                        help="our DIEN's interest-evolving GRU (config model.gru_variant): augru_keep = attention "
                             "scales the keep gate, DeepCTR's VecAttGRUCell; augru = the paper's, attention "
                             "scales the update gate (the model's and this bench's default)")
    parser.add_argument("--recurrence_xla", type=int, choices=(0, 1), default=int(BENCH_DEFAULTS.recurrence_xla),
                        help="1 (the model's and this bench's default) XLA-compiles our DIEN's GRU step loops in "
                             "training (config model.recurrence_xla): less CPU per step, about 0.6 s more to the "
                             "first step; 0 runs them plain")
    parser.add_argument("--gru_reset_after", type=int, choices=(0, 1), default=int(BENCH_DEFAULTS.gru_reset_after),
                        help="1 (the model's default): our DIEN's GRUs in Keras' reset_after form; 0 (this bench's "
                             "default, chosen on validation): the candidate reset before its matmul with "
                             "tf.compat.v1 GRUCell's joint glorot kernels, DeepCTR's (config "
                             "model.gru_reset_after)")
    parser.add_argument("--attention_moments", default=BENCH_DEFAULTS.attention_moments,
                        choices=("valid", "every_slot"),
                        help="where our DIEN's attention Dice takes its batch moments (config "
                             "model.attention_moments): valid steps (the model's and this bench's default) or "
                             "every [batch, T] slot, padding included, DeepCTR's")
    parser.add_argument("--select_epoch", default="none", choices=("none", "validation"),
                        help="none (the default): every run trains the protocol's fixed 2 epochs on all training "
                             "rows and reports the test figures after them; validation: each user's "
                             "second-to-last event pair is held out of the training rows as a validation split "
                             "(the same rows for both stacks), each run trains --max_epochs epochs, evaluates "
                             "validation and test after each, and reports the test figures of the epoch with the "
                             "best validation AUC (the per-epoch curve and the figures after epoch 2 in the JSON)")
    parser.add_argument("--max_epochs", type=int, default=None,
                        help="with --select_epoch=validation: the most epochs trained (default 3; at least 2: the "
                             "steady timings are epoch 2's); with --summarize: choose among the first this many "
                             "epochs of each run's curve (the first epochs of a longer run are the same; default: "
                             "each run's own count)")
    parser.add_argument("--results", default="",
                        help="a JSON-lines file: each finished run's figures are appended to it as one line, so "
                             "runs of several invocations (or of one cut short) can be summarised together; "
                             "one file per --embedding_l2, --aux_normalization, --gru_gate_bias, "
                             "--embedding_init_stddev, --embedding_init_seed, --evolution_trainable and "
                             "--gru_variant (the summary "
                             "pairs runs by model and seed)")
    parser.add_argument("--summarize", action="store_true",
                        help="run nothing: print the per-seed lines and the summary over seeds of the runs in "
                             "--results")
    parser.add_argument("--one", default="", help="internal: run this side:model in this process, print JSON")
    parser.add_argument("--precision", default="none", help="internal: the policy of the --one run")
    args = parser.parse_args(argv)
    if args.max_epochs is not None and args.max_epochs < EPOCHS:
        parser.error(f"--max_epochs must be at least {EPOCHS}: the steady timings are epoch {EPOCHS}'s")
    options = OurOptions(embedding_l2=args.embedding_l2, aux_normalization=args.aux_normalization,
                         gru_gate_bias=args.gru_gate_bias, embedding_init_stddev=args.embedding_init_stddev,
                         embedding_init_seed=None if args.embedding_init_seed < 0 else args.embedding_init_seed,
                         evolution_trainable=bool(args.evolution_trainable), gru_variant=args.gru_variant,
                         recurrence_xla=bool(args.recurrence_xla), gru_reset_after=bool(args.gru_reset_after),
                         attention_moments=args.attention_moments)
    max_epochs = 3 if args.max_epochs is None else args.max_epochs
    if args.one:
        side, name = args.one.split(":")
        print("RESULT " + json.dumps(run_one(side, name, int(args.seeds.split(",")[0]), args.precision, options,
                                             args.select_epoch, max_epochs)), flush=True)
        return 0
    if args.summarize:
        if not args.results:
            parser.error("--summarize reads the runs of --results=PATH")
        with open(args.results) as lines:
            results = [json.loads(line) for line in lines if line.strip()]
        if args.max_epochs is not None:
            results = [reselect(r, args.max_epochs) for r in results]
        for r in results:
            print(run_line(r))
        print("\n".join(summary(results)))
        return 0
    precisions = {"ours": [p for p in args.mixed_precision.split(",") if p],
                  "peer": [p for p in args.peer_mixed_precision.split(",") if p]}
    known = ("none", "mixed_bfloat16", "mixed_float16")
    for side, listed in precisions.items():
        if not listed or set(listed) - set(known):
            parser.error(f"the {side} precisions {listed} must be a non-empty subset of {known}")
    if not os.path.exists(DATA):
        print(f"skipped: {DATA} is absent (../shared/datasets)")
        return 0
    try:
        import deepctr  # noqa: F401
        runs = args.runs.split(",")
    except ImportError:
        runs = [r for r in args.runs.split(",") if r.startswith("ours:")]
        print("DeepCTR is not installed (make peers-env): our models only")
    print(f"load before: {os.getloadavg()}")
    results = []
    for seed in args.seeds.split(","):
        for run, precision in [(run, p) for run in runs for p in precisions[run.split(":")[0]]]:
            output = subprocess.run([sys.executable, "-m", "bench.bench_sequence_peers", f"--one={run}",
                                     f"--seeds={seed}", f"--precision={precision}", *options.flags(),
                                     f"--select_epoch={args.select_epoch}", f"--max_epochs={max_epochs}"],
                                    capture_output=True,
                                    text=True,
                                    timeout=3600,
                                    env={**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
            lines = [line for line in output.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                print(f"{run} {precision} seed {seed} failed:\n{output.stderr[-3000:]}")
                continue
            results.append(json.loads(lines[0][len("RESULT "):]))
            print(run_line(results[-1]), flush=True)
            if args.results:
                with open(args.results, "a") as out:
                    out.write(json.dumps(results[-1]) + "\n")
    print("\n".join(summary(results)))
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
