"""The model base every family extends: what a model declares, and the one train/test step they all share.

A family writes ``call`` (features → named outputs) and its layers; the base gives it:

* **inputs**: ``self.embeddings`` (``EmbeddingTables``), the one owner of the model's tables, and
  ``embedding_view(names)`` for each tower or branch, so a shared item table is one variable;
* **outputs**: ``call`` returns every output, training heads included; ``training_heads`` names the outputs
  that exist for training only (a position-bias logit), which every exported signature leaves out.
  Training-only features (``training_only`` in the schema) are never serving inputs: ``call`` must give the
  serving outputs without them (``has_features``) — the serving signature does not carry them;
* **the step**: ``train_step``/``test_step`` sum the tasks' losses (``tfrecsys.models.tasks``) with their
  weights, masks and per-sample weights, plus the model's own losses (``add_loss``: auxiliary losses,
  regularisers), averaged over the *global* batch under any distribution strategy, and update every task's
  metrics over its masked rows. ``training_outputs`` (default: ``call``) lets a family hand a loss more than
  its served outputs (retrieval: logits against sampled negatives); ``evaluation_metrics`` and
  ``update_evaluation_metrics`` add evaluation metrics that belong to no task (full-corpus recall);
* **distillation**: ``distill`` makes training add ``λ · CE(t, s)`` to the loss of named outputs, ``t`` a
  teacher's probability in a column of the batch (``tfrecsys.losses.distillation``; online learning);
* **export**: ``export_kinds`` says what ``tfrecsys.export`` writes: ``("ranking",)`` (one SavedModel of the
  serving outputs) and/or ``"retrieval"`` (a top-K query model and a candidate model, from
  ``retrieval_export()``).
"""

from typing import Mapping, Sequence

import tensorflow as tf

from tfrecsys.features.embedding import EmbeddingTables, FeatureEmbedding
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.losses.distillation import Distillation
from tfrecsys.models.tasks import Task, task_columns

EXPORT_KINDS = ("ranking", "retrieval")


class StepMetrics:
    """Metrics held outside Keras' tracking (a plain object, not a list or dict attribute): their variables
    are step state, so they stay out of ``model.weights``, ``get_weights`` and checkpoints — a replica's
    partial counts would otherwise differ between workers and from a one-worker run."""

    def __init__(self, metrics=()):
        self.metrics = list(metrics)


class RecModel(tf.keras.Model):
    """Base of every tfrecsys model. Subclasses implement ``call(features, training)`` → ``{output: tensor}``.

    Outputs used by a task with a loss or metrics are per-row ``[batch]`` (or ``[batch, 1]``) values.
    """

    export_kinds: tuple = ("ranking",)
    training_heads: tuple = ()
    distillation = None  # a Distillation once ``distill`` is called

    def __init__(self, schema: FeatureSchema, tasks: Sequence[Task], **kwargs):
        super().__init__(**kwargs)
        unknown = sorted(set(self.export_kinds) - set(EXPORT_KINDS))
        if unknown or not self.export_kinds:
            raise ValueError(f"{type(self).__name__}.export_kinds must be a non-empty subset of {EXPORT_KINDS}")
        self.schema = schema
        self.tasks = list(tasks)
        self.embeddings = EmbeddingTables(schema, name="embeddings")
        self._step = StepMetrics()
        self._step.loss = tf.keras.metrics.Mean(name="loss")
        self._step.task_losses = {t.name: tf.keras.metrics.Mean(name=f"{t.name}_loss")
                                  for t in self.tasks if t.has_loss}
        self._step.tasks = {t.name: t.make_metrics() for t in self.tasks}

    # Inputs ------------------------------------------------------------------------------------------------

    def embedding_view(self, feature_names: Sequence[str], name=None) -> FeatureEmbedding:
        """Embeds ``feature_names`` through the model's one set of tables."""
        return self.embeddings.view(feature_names, name=name)

    @property
    def serving_features(self) -> list[str]:
        """What a serving client sends: the schema's inputs that are not training-only."""
        return [f.name for f in self.schema.serving_inputs]

    @property
    def training_only_features(self) -> list[str]:
        return [f.name for f in self.schema.inputs if f.training_only]

    @staticmethod
    def has_features(features: Mapping, names: Sequence[str]) -> bool:
        """Whether every one of ``names`` is in the batch: training-only towers run only when it is."""
        return all(name in features for name in names)

    # Outputs -----------------------------------------------------------------------------------------------

    def training_outputs(self, features, training: bool) -> dict:
        """What the tasks read: ``call``'s outputs by default."""
        return self(features, training=training)

    def retrieval_export(self) -> dict:
        """Keyword arguments of ``tfrecsys.export.retrieval.export_retrieval`` (towers, corpus, K) for a
        family whose ``export_kinds`` holds "retrieval"."""
        raise TypeError(f"{type(self).__name__} exports {self.export_kinds}, not a retrieval model")

    # The step ---------------------------------------------------------------------------------------------

    def distill(self, teacher_columns: Mapping[str, str], weight: float) -> None:
        """In training, adds ``weight · CE(t, s)`` to the per-row loss of each output ``s`` named in
        ``teacher_columns``, ``t`` being the teacher's probability in that column of the batch. Call before
        the first train step (the step is traced once)."""
        unknown = sorted(set(teacher_columns) - {t.name for t in self.tasks if t.has_loss})
        if unknown:
            raise ValueError(f"cannot distil outputs {unknown}: they have no task with a loss")
        self.distillation = Distillation(tuple(sorted(teacher_columns.items())), weight)

    @property
    def evaluation_metrics(self) -> list:
        """Evaluation metrics that belong to no task (full-corpus retrieval metrics); none by default."""
        return []

    def update_evaluation_metrics(self, features, labels, outputs) -> None:
        """Updates ``evaluation_metrics`` for an evaluation batch; nothing to do for a model that has none."""

    @property
    def metrics(self):
        task_metrics = [m for t in self.tasks for m in self._step.tasks[t.name]]
        return [self._step.loss, *self._step.task_losses.values(), *task_metrics, *self.evaluation_metrics]

    def _step_loss(self, data, training: bool):
        features, labels = data
        outputs = self.training_outputs(features, training=training)
        loss_tasks = [t for t in self.tasks if t.has_loss]
        columns = {t.name: task_columns(t, features, labels) for t in self.tasks}
        rows = tf.shape(tf.nest.flatten(features)[0])[0]
        weights = {t.name: t.row_weights(columns[t.name], rows) for t in self.tasks
                   if t.has_loss or self._step.tasks[t.name]}
        numerators, denominators = [], []
        for task in loss_tasks:
            losses = task.row_losses(columns[task.name], outputs[task.name])
            if training and self.distillation is not None and task.name in self.distillation.outputs:
                losses += self.distillation.row_losses(task.name, outputs[task.name], features, labels)
            self._step.task_losses[task.name].update_state(losses, sample_weight=weights[task.name])
            numerators.append(tf.reduce_sum(losses * weights[task.name]))
            denominators.append(tf.reduce_sum(weights[task.name]))
        total = tf.constant(0.0)
        if loss_tasks:
            # The global Σ m·w of each task: each replica divides its own numerator by it, so the replicas'
            # gradients sum to the gradient of the global weighted mean.
            global_denominators = tf.stack(denominators)
            context = tf.distribute.get_replica_context()
            if context is not None:
                global_denominators = context.all_reduce(tf.distribute.ReduceOp.SUM, global_denominators)
            for index, task in enumerate(loss_tasks):
                total += task.weight * tf.math.divide_no_nan(numerators[index], global_denominators[index])
        if self.losses:
            total += tf.nn.scale_regularization_loss(tf.add_n([tf.cast(l, tf.float32) for l in self.losses]))
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # Each replica adds its share times the replica count, so the Mean over replicas is the global loss.
        self._step.loss.update_state(total * replicas)
        for task in self.tasks:
            if self._step.tasks[task.name]:
                task.update_metrics(self._step.tasks[task.name], columns[task.name], outputs[task.name],
                                    weights[task.name])
        if not training:
            self.update_evaluation_metrics(features, labels, outputs)
        return total

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self._step_loss(data, training=True)
        # minimize (not tape.gradient + apply_gradients) so a LossScaleOptimizer scales the loss (float16).
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        evaluation_only = {id(metric) for metric in self.evaluation_metrics}
        return {metric.name: metric.result() for metric in self.metrics if id(metric) not in evaluation_only}

    def test_step(self, data):
        self._step_loss(data, training=False)
        return {metric.name: metric.result() for metric in self.metrics}
