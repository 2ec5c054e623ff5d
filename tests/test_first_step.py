"""Time to the first training step: what the package and the train loop do so the first step is not paid twice.

Timing itself is not asserted (the machine is shared); the two causes measured in docs/retrieval.md are:
AutoGraph converting code that is already graph-safe, and a train step traced twice because the model's
variables were created inside its first trace.
"""

import tensorflow as tf
from tensorflow.python.autograph.impl import conversion

from tests.test_model_base import SCHEMA, batch, compiled
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.retrieval import MixedNegativeLogits
from tfrecsys.models.logistic_regression import LogisticRegression
from tfrecsys.models.tasks import tasks_from_config
from tfrecsys.train.loop import create_variables


def user_function(x):
    return x + 1


def test_autograph_leaves_tfrecsys_and_tf_keras_alone_and_still_converts_user_code():
    assert conversion.is_allowlisted(MLP.call)
    assert conversion.is_allowlisted(MixedNegativeLogits.call)
    assert conversion.is_allowlisted(tf.keras.layers.Dense.call)
    assert not conversion.is_allowlisted(user_function)


class TraceCountingModel(LogisticRegression):
    """Counts how often ``fit`` traces the train step (Python in a tf.function runs only while tracing)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.traces = []

    def train_step(self, data):
        self.traces.append(len(self.traces))
        return super().train_step(data)


def test_fit_traces_the_train_step_once_after_create_variables():
    model = compiled(TraceCountingModel(SCHEMA, tasks_from_config({"ctr": dict(label="click")})))
    create_variables(model, SCHEMA)
    assert model.trainable_variables, "the forward pass was not traced: no variables"
    assert model.optimizer.variables, "the optimizer's slots were not created"
    weights_before = [v.numpy().copy() for v in model.trainable_variables]

    model.fit(tf.data.Dataset.from_tensors(batch()).repeat(), epochs=1, steps_per_epoch=3, verbose=0)

    assert len(model.traces) == 1
    assert int(model.optimizer.iterations.numpy()) == 3
    assert any((before != after.numpy()).any() for before, after in zip(weights_before, model.trainable_variables))
