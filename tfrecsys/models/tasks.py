"""Tasks: what the train step does with a model's named outputs.

Config block ``tasks``: ``{output_name: {label, loss, weight, mask, sample_weight, metrics, group}}``. Output names
are the model's output names (``score``; ``ctr``/``cvr``/``ctcvr``). A task is apart from the output it reads:

* ``loss``: a name of the loss registry (``register_loss``), or None for an output that is only served or
  only evaluated (ESMM's ``cvr``); ``label``: the label column the loss and metrics compare with (a loss such
  as ``sampled_softmax`` needs none);
* ``weight``: the task's weight in the summed loss;
* ``mask``: rows the task counts — a column (rows where it is non-zero) or a condition ``"click == 1"``
  (``== != > >= < <=`` against a number); a masked row adds nothing to the loss or the metrics;
* ``sample_weight``: a column whose value weights each row;
* ``metrics``: names from ``METRICS`` (default by loss: AUC and logloss for binary tasks, MSE for
  regression), computed over the masked, weighted rows; ``group``: the column GAUC groups by (a user id);
* ``loss_columns``: for a loss that reads per-row columns besides the label (``register_loss(columns=…)``,
  e.g. the sample type of a delayed-feedback stream), ``{loss argument: column}``; an argument not named
  here reads the column of its own name.

A loss whose prediction is a dict (logits and auxiliary outputs) gives its metrics the dict's
``probability`` entry, the task's served prediction.

Columns come from the batch's labels first, then its input features, so a loss or mask can use any label or
auxiliary column of the schema, named by a task or not.

A task's loss over a global batch is the weighted mean ``Σ_i m_i w_i ℓ_i / Σ_i m_i w_i`` (``m`` the mask,
``w`` the sample weight, both 1 when absent): ``task_loss`` returns this replica's share, its numerator over
the global denominator, so that the replicas' gradients add up to the gradient of the global mean.
"""

import dataclasses
import re
from typing import Callable, Mapping, Optional

import tensorflow as tf

from tfrecsys.losses.sampled_softmax import SampledSoftmaxLoss
from tfrecsys.metrics import METRIC_DTYPE, means
from tfrecsys.metrics.ranking import Calibration, GroupAUC


@dataclasses.dataclass(frozen=True)
class LossFunction:
    """``fn(label [batch] or None, prediction) -> [batch]`` per-row losses; ``prediction`` is whatever the
    model's training output for the task is (probabilities ``[batch]``, or a dict of logits)."""
    fn: Callable
    needs_label: bool = True
    default_metrics: tuple = ()
    columns: tuple = ()  # per-row columns ``fn`` takes as keyword arguments besides the label
    # The task's served output is the probability of its 0/1 label: calibration and distillation apply to it.
    binary: bool = False


_LOSSES: dict[str, LossFunction] = {}
_PER_ROW_SAMPLED_SOFTMAX = SampledSoftmaxLoss(reduction=tf.keras.losses.Reduction.NONE)


def register_loss(name: str, needs_label: bool = True, default_metrics: tuple = (), columns: tuple = (),
                  binary: bool = False):
    """Decorator: makes ``fn(label, prediction) -> [batch]`` available as ``loss=name`` in task configs;
    ``columns``: names of per-row columns ``fn`` also takes, as keyword arguments of ``[batch]`` float32;
    ``binary``: the task's served output is the probability of its 0/1 label (``Task.predicts_binary_label``)."""

    def decorate(fn):
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        _LOSSES[name] = LossFunction(fn, needs_label, tuple(default_metrics), tuple(columns), binary)
        return fn

    return decorate


def available_losses() -> list[str]:
    return sorted(_LOSSES)


@register_loss("binary_crossentropy", default_metrics=("auc", "logloss"), binary=True)
def binary_crossentropy(label, probability):
    """``−y log p − (1−y) log(1−p)``; Keras' form, which reads the logit back from a sigmoid for stability."""
    return tf.keras.backend.binary_crossentropy(label[:, tf.newaxis], probability[:, tf.newaxis])[:, 0]


@register_loss("mse", default_metrics=("mse",))
def squared_error(label, prediction):
    return tf.square(prediction - label)


@register_loss("sampled_softmax", needs_label=False)
def sampled_softmax(_, prediction):
    """The retrieval loss (``tfrecsys.losses.sampled_softmax``) of each row's positive column among
    ``prediction["logits"]`` ``[batch, C]``, the column being ``prediction["positive_column"]`` ``[batch]``."""
    return _PER_ROW_SAMPLED_SOFTMAX(prediction["positive_column"], prediction["logits"])


METRICS = {
    # Keras' own metrics too get METRIC_DTYPE (tfrecsys.metrics: no AutoCastVariables under mixed precision).
    "auc": lambda task: tf.keras.metrics.AUC(name=f"{task.name}_auc", num_thresholds=2000, dtype=METRIC_DTYPE),
    # Keras' BinaryCrossentropy and MeanSquaredError metrics without their runtime broadcast of the weights.
    "logloss": lambda task: means.logloss(name=f"{task.name}_logloss"),
    "mse": lambda task: means.mean_squared_error(name=f"{task.name}_mse"),
    "calibration": lambda task: Calibration(name=f"{task.name}_calibration"),
    "gauc": lambda task: GroupAUC(name=f"{task.name}_gauc"),
    "pr_auc": lambda task: tf.keras.metrics.AUC(name=f"{task.name}_pr_auc", curve="PR", num_thresholds=2000,
                                                dtype=METRIC_DTYPE),
}
_CONDITION = re.compile(r"^\s*(?P<column>[A-Za-z_]\w*)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<value>-?\d+(\.\d*)?)\s*$")
_COMPARE = {"==": tf.equal, "!=": tf.not_equal, ">=": tf.greater_equal, "<=": tf.less_equal, ">": tf.greater,
            "<": tf.less}
_FIELDS = ("label", "loss", "weight", "mask", "sample_weight", "metrics", "group", "loss_columns")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    label: Optional[str] = None
    loss: Optional[str] = "binary_crossentropy"
    weight: float = 1.0
    mask: Optional[str] = None
    sample_weight: Optional[str] = None
    metrics: Optional[tuple] = None
    group: Optional[str] = None
    loss_columns: tuple = ()  # (loss argument, column) pairs; see the module docstring

    @property
    def has_loss(self) -> bool:
        return self.loss is not None

    @property
    def predicts_binary_label(self) -> bool:
        """The output is the probability of a 0/1 label (a ``binary`` loss with a label): what calibration
        maps and distillation apply to."""
        return bool(self.label) and self.loss is not None and _LOSSES[self.loss].binary

    @property
    def metric_names(self) -> tuple:
        if self.metrics is not None:
            return tuple(self.metrics)
        return _LOSSES[self.loss].default_metrics if self.loss else ()

    @property
    def mask_column(self) -> Optional[str]:
        if self.mask is None:
            return None
        match = _CONDITION.match(self.mask)
        return match.group("column") if match else self.mask.strip()

    @property
    def loss_inputs(self) -> dict:
        """``{loss argument: column}`` of every per-row column the task's loss reads besides the label."""
        if not self.loss:
            return {}
        named = dict(self.loss_columns)
        return {argument: named.get(argument, argument) for argument in _LOSSES[self.loss].columns}

    def columns(self) -> list[str]:
        """Every column the task reads, besides the model's output."""
        own = [c for c in (self.label, self.mask_column, self.sample_weight, self.group) if c]
        return own + [c for c in self.loss_inputs.values() if c not in own]

    def make_metrics(self) -> list:
        return [METRICS[name](self) for name in self.metric_names]

    def row_weights(self, columns: Mapping[str, tf.Tensor], rows: tf.Tensor) -> tf.Tensor:
        """``m_i · w_i`` ``[rows]`` float32: the mask (0/1) times the per-sample weight."""
        weights = tf.ones([rows], tf.float32)
        if self.mask is not None:
            match = _CONDITION.match(self.mask)
            if match:
                value = tf.cast(tf.reshape(columns[match.group("column")], [-1]), tf.float32)
                keep = _COMPARE[match.group("op")](value, float(match.group("value")))
            else:
                keep = tf.not_equal(tf.cast(tf.reshape(columns[self.mask_column], [-1]), tf.float32), 0.0)
            weights *= tf.cast(keep, tf.float32)
        if self.sample_weight is not None:
            weights *= tf.cast(tf.reshape(columns[self.sample_weight], [-1]), tf.float32)
        return weights

    def label_values(self, columns: Mapping[str, tf.Tensor]) -> Optional[tf.Tensor]:
        return tf.cast(tf.reshape(columns[self.label], [-1]), tf.float32) if self.label else None

    def row_losses(self, columns: Mapping[str, tf.Tensor], prediction) -> tf.Tensor:
        """Per-row losses ``ℓ_i`` ``[batch]`` float32 of ``prediction`` (the task's output)."""
        if isinstance(prediction, tf.Tensor):
            prediction = tf.cast(tf.reshape(prediction, [-1]), tf.float32)
        extra = {argument: tf.cast(tf.reshape(columns[column], [-1]), tf.float32)
                 for argument, column in self.loss_inputs.items()}
        return tf.cast(_LOSSES[self.loss].fn(self.label_values(columns), prediction, **extra), tf.float32)

    def update_metrics(self, metrics, columns: Mapping[str, tf.Tensor], prediction, weights) -> None:
        # [batch, 1]: Keras' mean metrics (logloss, mse) average over the last axis, one value per row.
        label = self.label_values(columns)[:, tf.newaxis]
        if isinstance(prediction, Mapping):
            prediction = prediction["probability"]
        prediction = tf.cast(tf.reshape(prediction, [-1, 1]), tf.float32)
        for metric in metrics:
            if isinstance(metric, GroupAUC):
                metric.update_state(label, prediction, columns[self.group], sample_weight=weights)
            else:
                metric.update_state(label, prediction, sample_weight=weights)


def task_columns(task: Task, features: Mapping, labels: Mapping) -> dict:
    """The columns ``task`` reads, from the labels first, then the input features."""
    out = {}
    for column in task.columns():
        if column in labels:
            out[column] = labels[column]
        elif column in features:
            out[column] = features[column]
        else:
            raise KeyError(f"task {task.name!r} reads column {column!r}, which the batch does not hold; it has "
                           f"labels {sorted(labels)} and features {sorted(features)}")
    return out


def tasks_from_config(tasks_config, schema=None) -> list[Task]:
    """Tasks of a config ``tasks`` block; with ``schema``, every column a task names must be in it."""
    tasks = []
    for name, spec in tasks_config.items():
        spec = dict(spec)
        unknown = sorted(set(spec) - set(_FIELDS))
        if unknown:
            raise ValueError(f"task {name!r}: unknown keys {unknown}; a task takes {list(_FIELDS)}")
        loss = spec.get("loss", "binary_crossentropy")
        if loss is not None and loss not in _LOSSES:
            raise ValueError(f"task {name!r}: loss {loss!r} is not one of {available_losses()} (or None for an "
                             "output with no loss)")
        if "loss_columns" in spec:
            spec["loss_columns"] = tuple(sorted(dict(spec["loss_columns"]).items()))
            takes = _LOSSES[loss].columns if loss else ()
            bad = sorted(set(dict(spec["loss_columns"])) - set(takes))
            if bad:
                raise ValueError(f"task {name!r}: loss_columns names {bad}, but loss {loss!r} reads only the "
                                 f"columns {list(takes)}")
        if loss is not None and _LOSSES[loss].needs_label and not spec.get("label"):
            raise ValueError(f"task {name!r}: loss {loss!r} needs a 'label' column")
        if "metrics" in spec:
            spec["metrics"] = tuple(spec["metrics"])
            bad = sorted(set(spec["metrics"]) - set(METRICS))
            if bad:
                raise ValueError(f"task {name!r}: unknown metrics {bad}; known: {sorted(METRICS)}")
            if spec["metrics"] and not spec.get("label"):
                raise ValueError(f"task {name!r}: metrics {list(spec['metrics'])} compare with a 'label'; set one")
            if "gauc" in spec["metrics"] and not spec.get("group"):
                raise ValueError(f"task {name!r}: metric 'gauc' needs 'group', the column rows are grouped by "
                                 "(e.g. user_id)")
        task = Task(name=name, **spec)
        if schema is not None:
            known = {f.name for f in schema.features}
            for column in task.columns():
                if column not in known:
                    raise ValueError(f"task {name!r} reads column {column!r}, which is not a feature of the "
                                     f"schema ({sorted(known)})")
        tasks.append(task)
    if not tasks:
        raise ValueError("config.tasks is empty: a model needs at least one output")
    return tasks
