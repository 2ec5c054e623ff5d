"""Online-learning options of streaming training (``config.train.online``; digest B.3), for every model.

A model updated window by window on a stream that cannot be shuffled globally drifts; the practice counters
it three ways, each optional:

* ``freeze = "all_but_embeddings"``: only the embedding tables (``RecModel.embeddings``) train; the
  feature-cross, tower and head layers keep the weights they had (from the checkpoint the stream resumes,
  e.g. an offline model's). Frozen layers run in inference mode (batch normalisation keeps its statistics).
* ``replay_windows = R > 0``: window ``t`` is trained on together with the rows of window ``t − R``, the
  oldest window of the trailing ``R`` that has not been seen again ("at 1 o'clock, mix in yesterday's rows
  from after 1 o'clock": hourly windows, ``R = 24``; each row is thus trained on twice, ``R`` windows
  apart). The two are interleaved evenly, each in its own time order; evaluation of window ``t`` reads
  window ``t`` alone. The first ``R`` windows have nothing to replay.
* ``distillation_weight = λ > 0``: the loss of every binary output ``s`` becomes
  ``BCE(y, s) + λ · CE(t, s)`` (``tfrecsys.losses.distillation``; the practice takes λ = 0.2), ``t`` the
  offline teacher's probability: from ``teacher_saved_model`` (an export: ``<export_base>/<name>`` for its
  newest version, or a version directory), run on each training batch's serving features, or else from a
  precomputed column of the data, ``teacher_column`` with ``{output}`` replaced by the output's name
  (declare it in ``config.features`` as ``kind="label"``).
"""

import dataclasses
import os

import tensorflow as tf
from absl import logging

from tfrecsys.calibration import binary_tasks

FREEZE_CHOICES = ("none", "all_but_embeddings")
# The serving signature a teacher export is called through (tfrecsys/contract.py's SERVING_DEFAULT).
_TEACHER_SIGNATURE = "serving_default"


@dataclasses.dataclass(frozen=True)
class OnlineSettings:
    freeze: str = "none"
    replay_windows: int = 0
    distillation_weight: float = 0.0
    teacher_saved_model: str = ""
    teacher_column: str = "teacher_{output}"

    def __post_init__(self):
        if self.freeze not in FREEZE_CHOICES:
            raise ValueError(f"config.train.online.freeze must be one of {FREEZE_CHOICES}, got {self.freeze!r}")
        if self.replay_windows < 0:
            raise ValueError(f"config.train.online.replay_windows must be >= 0, got {self.replay_windows}")
        if self.distillation_weight < 0:
            raise ValueError("config.train.online.distillation_weight must be >= 0, got "
                             f"{self.distillation_weight}")
        if "{output}" not in self.teacher_column:
            raise ValueError("config.train.online.teacher_column must contain '{output}' (the output's name), "
                             f"got {self.teacher_column!r}")

    @property
    def enabled(self) -> bool:
        return self.freeze != "none" or self.replay_windows > 0 or self.distillation_weight > 0

    @classmethod
    def from_config(cls, config) -> "OnlineSettings":
        """The settings of ``config.train.online``; fails when they are set outside streaming mode."""
        block = config.train.get("online")
        settings = cls(**dict(block)) if block else cls()
        if settings.enabled and config.train.get("mode", "batch") != "streaming":
            raise ValueError("config.train.online options (freeze, replay_windows, distillation_weight) apply to "
                             "config.train.mode='streaming' only")
        return settings


def freeze_all_but_embeddings(model) -> None:
    """Makes every layer of ``model`` but its embedding tables non-trainable: ``model.trainable_variables``
    is then the tables' variables alone. Views that reach the tables through a frozen layer do not freeze
    them: the tables stay trainable through the model's own ``embeddings``."""
    for layer in model.layers:
        layer.trainable = False
    model.embeddings.trainable = True
    tables = {id(variable) for variable in model.embeddings.trainable_variables}
    others = [variable.name for variable in model.trainable_variables if id(variable) not in tables]
    if others:
        raise ValueError(f"{type(model).__name__} holds variables {others} outside its layers: cannot freeze them")


def replayed_window(windows: list, window, settings: OnlineSettings):
    """The window whose rows are replayed with ``window`` (``windows[t − R]``), or None."""
    if settings.replay_windows <= 0 or window.index < settings.replay_windows:
        return None
    return windows[window.index - settings.replay_windows]


def mix_replay(current: tf.data.Dataset, replay: tf.data.Dataset, current_rows: int, replay_rows: int,
               batch_size: int) -> tf.data.Dataset:
    """Batches of ``batch_size`` rows of ``current`` and ``replay`` (batched datasets of ``current_rows`` and
    ``replay_rows`` rows) interleaved evenly: row ``i`` of the ``N`` is a replay row when
    ``⌊(i+1)R/N⌋ > ⌊iR/N⌋``, so every stretch of the mix holds its share of both, each in its own order."""
    total = current_rows + replay_rows
    choices = tf.data.Dataset.range(total).map(
        lambda i: (i + 1) * replay_rows // total - i * replay_rows // total)
    return tf.data.Dataset.choose_from_datasets([current.unbatch(), replay.unbatch()], choices).batch(batch_size)


class Teacher:
    """An exported model whose outputs become teacher columns of training batches: ``add_columns`` maps
    ``(features, labels)`` to the same with ``labels[column(o)] = teacher's o`` for each distilled output."""

    def __init__(self, path: str, columns: dict):
        self.path = _newest_version(path)
        self._loaded = tf.saved_model.load(self.path)
        self._signature = self._loaded.signatures[_TEACHER_SIGNATURE]
        self._inputs = sorted(self._signature.structured_input_signature[1])
        missing = sorted(set(columns) - set(self._signature.structured_outputs))
        if missing:
            raise ValueError(f"teacher {self.path} has no outputs {missing} to distil from; it serves "
                             f"{sorted(self._signature.structured_outputs)}")
        self.columns = dict(columns)

    def add_columns(self, features, labels):
        absent = [name for name in self._inputs if name not in features]
        if absent:
            raise ValueError(f"teacher {self.path} takes inputs {absent} that the training rows do not hold")
        outputs = self._signature(**{name: features[name] for name in self._inputs})
        teacher = {column: tf.reshape(tf.cast(outputs[output], tf.float32), [-1])
                   for output, column in self.columns.items()}
        return features, {**labels, **teacher}


def _newest_version(path: str) -> str:
    """``path`` itself when it is a SavedModel, else its highest integer version directory."""
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted(int(name.rstrip("/")) for name in (tf.io.gfile.listdir(path) if tf.io.gfile.isdir(path) else [])
                      if name.rstrip("/").isdigit())
    if not versions:
        raise FileNotFoundError(f"config.train.online.teacher_saved_model {path!r} is neither a SavedModel nor "
                                "an export base holding integer versions")
    return os.path.join(path, str(versions[-1]))


def freeze(model, settings: OnlineSettings) -> None:
    """Applies ``settings.freeze`` to a freshly built ``model``, before it is compiled (Keras restores the
    trainable flags of compile time at every ``fit``)."""
    if settings.freeze == "all_but_embeddings":
        freeze_all_but_embeddings(model)
        logging.info("online: training only the embedding tables (%d variables)",
                     len(model.trainable_variables))


def prepare_distillation(config, model, schema, settings: OnlineSettings):
    """Makes ``model`` distil when ``settings`` ask for it (before its first step). Returns the ``Teacher``
    that fills the teacher columns, or None (no distillation, or precomputed columns)."""
    if settings.distillation_weight <= 0:
        return None
    outputs = [task.name for task in binary_tasks(config)]
    if not outputs:
        raise ValueError("config.train.online.distillation_weight is set, but the config has no "
                         "binary task with a label (binary_crossentropy or a delayed-feedback CVR loss) to distil")
    columns = {output: settings.teacher_column.format(output=output) for output in outputs}
    model.distill(columns, settings.distillation_weight)
    if settings.teacher_saved_model:
        return Teacher(settings.teacher_saved_model, columns)
    known = {feature.name for feature in schema.features}
    missing = sorted(set(columns.values()) - known)
    if missing:
        raise ValueError(f"distillation reads teacher columns {missing}, which config.features does not declare: "
                         "add them (kind='label') or set config.train.online.teacher_saved_model")
    return None
