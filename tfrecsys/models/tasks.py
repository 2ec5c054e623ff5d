"""Tasks: the named outputs of a model with their labels, losses and loss weights.

Config block ``tasks``: ``{output_name: {label, loss, weight}}``. Output names are the SavedModel's output
names (``score``; ``ctr``/``cvr``/``ctcvr``), so a task block is also the serving contract's output list.
"""

import dataclasses

import tensorflow as tf

from tfrecsys.losses.sampled_softmax import SampledSoftmaxLoss

_LOSSES = {
    "binary_crossentropy": lambda: tf.keras.losses.BinaryCrossentropy(),
    "mse": lambda: tf.keras.losses.MeanSquaredError(),
    "sampled_softmax": lambda: SampledSoftmaxLoss(),
}


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    label: str
    loss: str = "binary_crossentropy"
    weight: float = 1.0

    def make_loss(self):
        return _LOSSES[self.loss]()

    def make_metrics(self):
        """AUC and logloss for binary tasks (the numbers ranking is judged by), MSE for regression."""
        if self.loss == "binary_crossentropy":
            return [tf.keras.metrics.AUC(name="auc", num_thresholds=2000),
                    tf.keras.metrics.BinaryCrossentropy(name="logloss")]
        if self.loss == "sampled_softmax":
            # Retrieval metrics rank the whole candidate corpus, which only the model holds.
            return []
        return [tf.keras.metrics.MeanSquaredError(name="mse")]


def tasks_from_config(tasks_config) -> list[Task]:
    tasks = []
    for name, spec in tasks_config.items():
        spec = dict(spec)
        unknown = sorted(set(spec) - {"label", "loss", "weight"})
        if unknown or "label" not in spec:
            raise ValueError(f"task {name!r}: needs 'label' and takes only label, loss, weight; got {sorted(spec)}")
        if spec.get("loss", "binary_crossentropy") not in _LOSSES:
            raise ValueError(f"task {name!r}: loss {spec['loss']!r} is not one of {sorted(_LOSSES)}")
        tasks.append(Task(name=name, **spec))
    if not tasks:
        raise ValueError("config.tasks is empty: a model needs at least one output with a label")
    return tasks
