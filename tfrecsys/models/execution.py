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

Both functions run under ``GRAPH_OPTIMIZATION``: grappler, which optimises a function's graph at its first
call (0.7-1.0 CPU-seconds of MMoE's and DIEN + aux's first step), makes one round of its passes, not two,
and leaves out the two that change nothing in these graphs on CPU (the memory optimizer, the layout
optimizer); the other passes, which the steady step needs (remapper fusions, constant folding, arithmetic),
all run (bench/RESULTS.md, "first step, continued").

AutoGraph is off for the train and test functions of a model whose every layer and metric is tfrecsys' or
tf_keras' own (``autograph_converts_nothing``). With it on, Keras asks AutoGraph to convert each layer's
``call`` and each metric's ``update_state`` as the step is traced, and the rules of ``tfrecsys/__init__.py``
answer "leave it as written" for all of that code: the graph is the same, but the checks, and the conversion
of the loop around the step, cost ~0.25 of DIEN + aux's 2.7 CPU-seconds to its first step. A model with one
layer or metric of the user's own keeps AutoGraph, so the user's Python control flow over tensors is converted
as Keras always does.
"""

import contextlib

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.autograph.impl import conversion
from tensorflow.python.eager import context
from tf_keras.src.engine.training import _minimum_control_deps, reduce_per_replica

_REWRITER = rewriter_config_pb2.RewriterConfig
# Grappler's second round only removed duplicates the first one left (MMoE: 2,833 → 2,779 nodes of 4,779);
# the memory optimizer swaps or recomputes tensors for GPU memory, the layout optimizer converts to NCHW for
# GPUs: both left these CPU graphs unchanged, at 10-15% of grappler's time.
GRAPH_OPTIMIZATION = {"meta_optimizer_iterations": _REWRITER.ONE, "memory_optimization": _REWRITER.NO_MEM_OPT,
                      "layout_optimizer": _REWRITER.OFF}


def _function_call_options(current: context.FunctionCallOptions) -> context.FunctionCallOptions:
    """``current`` (the eager context's options: the user's ``tf.config`` settings) with ``GRAPH_OPTIMIZATION``
    in its grappler settings."""
    config = config_pb2.ConfigProto.FromString(current.config_proto_serialized)
    for field, value in GRAPH_OPTIMIZATION.items():
        setattr(config.graph_options.rewrite_options, field, value)
    return context.FunctionCallOptions(executor_type=current.executor_type, config_proto=config)


@contextlib.contextmanager
def graph_optimization():
    """Calls of ``tf.function``s in this block have their graphs optimised with ``GRAPH_OPTIMIZATION``: the
    eager context reads the options at each call (a function is optimised again under other options, so every
    call of a train function must be in such a block)."""
    eager = context.context()
    current = eager.function_call_options
    eager.function_call_options = _function_call_options(current)
    try:
        yield
    finally:
        eager.function_call_options = current


def _optimized(function):
    """``function`` (a ``tf.function``) called under ``graph_optimization``."""
    def call(*args):
        with graph_optimization():
            return function(*args)

    return call


def autograph_converts_nothing(model) -> bool:
    """Whether AutoGraph would leave every function Keras hands it in ``model``'s step as written: each layer's
    ``call`` (the model's own included) and each metric's ``update_state`` and ``result`` are of code its rules
    never convert (``conversion.is_allowlisted``: tfrecsys, tf_keras, TensorFlow). The step itself is
    ``RecModel.train_step``/``test_step`` (``RecModel.make_train_function`` checks it), and what it calls
    besides layers and metrics (tasks' losses, loss weighting) is called from tfrecsys' code, which AutoGraph
    does not convert either way."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if not conversion.is_allowlisted(type(layer).call):
            return False
    # The class's methods: Keras wraps each metric instance's update_state and result in its own (allowlisted)
    # wrappers, which would hide a user's method.
    return all(conversion.is_allowlisted(getattr(type(metric), method))
               for metric in model.metrics for method in ("update_state", "result"))


def _traced_once(model, step, counter, logs):
    """A ``tf.function(iterator)`` running ``model._steps_per_execution`` steps of ``step(data) → logs``
    (each increments ``counter``); it returns the last step's logs. ``logs()``: what a step returns, read from
    the model's state (its structure, shapes and dtypes start the loop)."""
    def run_step(data):
        outputs = step(data)
        with tf.control_dependencies(_minimum_control_deps(outputs)):
            counter.assign_add(1)
        return outputs

    autograph = not autograph_converts_nothing(model)
    if model.jit_compile:
        run_step = tf.function(run_step, jit_compile=True, reduce_retracing=True, autograph=autograph)

    def one_step(iterator):
        outputs = model.distribute_strategy.run(run_step, args=(next(iterator),))
        return reduce_per_replica(outputs, model.distribute_strategy, reduction=model.distribute_reduction_method)

    def execution(iterator):
        initial = tf.nest.map_structure(tf.zeros_like, logs())
        _, outputs = tf.while_loop(lambda done, _: done < model._steps_per_execution,
                                   lambda done, _: (done + 1, one_step(iterator)),
                                   (tf.zeros([], model._steps_per_execution.dtype), initial))
        return outputs

    return tf.function(execution, reduce_retracing=True, autograph=autograph)


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

    optimized = _optimized(execution)

    def first_then_all(iterator):
        outputs = optimized(iterator)
        model._steps_per_execution.assign(steps)
        model.train_function = optimized
        return outputs

    return first_then_all


def test_function(model, logs):
    """The test function ``Model.make_test_function`` returns where ``multi_step_applies``:
    ``model.test_step`` traced once."""
    return _optimized(_traced_once(model, model.test_step, model._test_counter, logs))
