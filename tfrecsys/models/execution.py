"""Keras' multi-step train and test functions (``steps_per_execution`` > 1), traced once.

tf_keras 2.16 runs ``n`` steps per call as ``for _ in tf.range(n): outputs = step(iterator)``. ``outputs`` is
undefined before that loop, so AutoGraph traces a whole step in a scratch graph to learn its structure before
it traces the loop's body: every model paid for tracing its train step (forward, gradients, optimizer) twice
before the first step ran (DIN 0.9 of 4.1 CPU-seconds to its first step; bench/RESULTS.md, issue 12). Here
the loop starts from zeros shaped like the step's logs, read from the metrics without tracing a step, and its
body (Keras' own step: ``strategy.run``, the per-replica reduction, the step counter, XLA when asked) is
traced once. The graph of a step is the same, so are its results (tests/test_first_step.py).

The first call of a train function runs one step instead of ``n``: it returns after one trace and one step,
not after ``n`` steps (DIEN's 20 steps are 2 CPU-seconds). Keras' data handler reads ``steps_per_execution``
before each call, so it counts that call as one step and the later ones as ``n``: the same batches in the
same order reach the same graph; only the steps between two callbacks' ``on_train_batch_end`` change.
"""

import tensorflow as tf
from tf_keras.src.engine.training import _minimum_control_deps, reduce_per_replica


def _traced_once(model, step, counter, logs):
    """A ``tf.function(iterator)`` running ``model._steps_per_execution`` steps of ``step(data) → logs``
    (each increments ``counter``); it returns the last step's logs. ``logs()``: what a step returns, read from
    the model's state (its structure, shapes and dtypes start the loop)."""
    def run_step(data):
        outputs = step(data)
        with tf.control_dependencies(_minimum_control_deps(outputs)):
            counter.assign_add(1)
        return outputs

    if model.jit_compile:
        run_step = tf.function(run_step, jit_compile=True, reduce_retracing=True)

    def one_step(iterator):
        outputs = model.distribute_strategy.run(run_step, args=(next(iterator),))
        return reduce_per_replica(outputs, model.distribute_strategy, reduction=model.distribute_reduction_method)

    def execution(iterator):
        initial = tf.nest.map_structure(tf.zeros_like, logs())
        _, outputs = tf.while_loop(lambda done, _: done < model._steps_per_execution,
                                   lambda done, _: (done + 1, one_step(iterator)),
                                   (tf.zeros([], model._steps_per_execution.dtype), initial))
        return outputs

    return tf.function(execution, reduce_retracing=True)


def multi_step_applies(model) -> bool:
    """Whether Keras would build its multi-step loop: compiled with ``steps_per_execution`` > 1, in graph mode,
    without a parameter-server coordinator or step autotuning (which keep Keras' own functions)."""
    spe = model._steps_per_execution
    return (spe is not None and spe.numpy().item() > 1 and not model.run_eagerly
            and not model.autotune_steps_per_execution and not model._cluster_coordinator)


def train_function(model, logs):
    """The train function ``Model.make_train_function`` returns, for a model where ``multi_step_applies``:
    ``model.train_step`` traced once, one step at the first call and ``steps_per_execution`` after it."""
    execution = _traced_once(model, model.train_step, model._train_counter, logs)
    model.train_tf_function = execution  # read by Keras' TensorBoard callback to write the step's graph
    steps = model._steps_per_execution.numpy().item()
    model._steps_per_execution.assign(1)

    def first_then_all(iterator):
        outputs = execution(iterator)
        model._steps_per_execution.assign(steps)
        model.train_function = execution
        return outputs

    return first_then_all


def test_function(model, logs):
    """The test function ``Model.make_test_function`` returns where ``multi_step_applies``:
    ``model.test_step`` traced once."""
    return _traced_once(model, model.test_step, model._test_counter, logs)
