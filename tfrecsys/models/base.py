"""The model base every family extends: what a model declares, and the one train/test step they all share.

A family writes ``call`` (features → named outputs) and its layers; the base gives it:

* **inputs**: ``self.embeddings`` (``EmbeddingTables``), the one owner of the model's tables, and
  ``embedding_view(names)`` for each tower or branch, so a shared item table is one variable;
* **outputs**: ``call`` returns every output, training heads included; ``training_heads`` names the outputs
  that exist for training only (a position-bias logit), which every exported signature leaves out.
  Training-only features (``training_only`` in the schema) are never serving inputs: ``call`` must give the
  serving outputs without them (``has_features``) — the serving signature does not carry them;
* **a position-bias tower** for any family (``add_position_tower``, config ``model.position_tower``): its
  logit, from training-only features, is added to the named tasks' outputs in the step only
  (``tfrecsys.layers.position_bias``); ``call``, and so every export, stays debiased;
* **the step**: ``train_step``/``test_step`` combine the tasks' losses (``tfrecsys.models.tasks``) with their
  weights, masks and per-sample weights through ``loss_weighting`` (``tfrecsys.losses.weighting``: fixed by
  default; uncertainty, DWA, GradNorm or PCGrad by ``set_loss_weighting``), plus the model's own losses
  (``add_loss``: auxiliary losses, regularisers), averaged over the *global* batch under any distribution strategy, and update every task's
  metrics over its masked rows (a loss that is a mean over a per-replica count of valid positions goes
  through ``tfrecsys.losses.replicas.mean_over_global_batch``). ``training_outputs`` (default: ``call``) lets
  a family hand a loss more than its served outputs (retrieval: logits against sampled negatives); the labels
  named in ``label_inputs`` (with their ``<name>_length``) reach it inside the features (a next-item model reads its label sequence
  to pick its positives), never ``call`` or a serving signature; ``evaluation_metrics`` and
  ``update_evaluation_metrics`` add evaluation metrics that belong to no task (full-corpus recall);
* **distillation**: ``distill`` makes training add ``λ · CE(t, s)`` to the loss of named outputs, ``t`` a
  teacher's probability in a column of the batch (``tfrecsys.losses.distillation``; online learning);
* **export**: ``export_kinds`` says what ``tfrecsys.export`` writes: ``("ranking",)`` (one SavedModel of the
  serving outputs) and/or ``"retrieval"`` (a top-K query model and a candidate model, from
  ``retrieval_export()``).
"""

from typing import Mapping, Sequence

import tensorflow as tf

from tfrecsys.contract import LENGTH_SUFFIX
from tfrecsys.features.embedding import EmbeddingTables, FeatureEmbedding
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.position_bias import PositionBiasTower, add_bias_logit
from tfrecsys.losses.distillation import Distillation
from tfrecsys.losses.weighting import LossWeighting, TaskLosses
from tfrecsys.metrics.means import WeightedMean
from tfrecsys.models import execution, in_memory
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
    label_inputs: tuple = ()
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
        self._step.loss = WeightedMean(name="loss")
        self._step.task_losses = {t.name: WeightedMean(name=f"{t.name}_loss")
                                  for t in self.tasks if t.has_loss}
        self._step.tasks = {t.name: t.make_metrics() for t in self.tasks}
        self.loss_weighting = LossWeighting([t.weight for t in self.tasks if t.has_loss], name="loss_weighting")
        self.position_tower = None
        self.position_tower_tasks = ()

    def set_loss_weighting(self, weighting: LossWeighting) -> None:
        """Replaces the fixed task weights by another kind (one multiplier per task with a loss, in order)."""
        expected = [t.weight for t in self.tasks if t.has_loss]
        if list(weighting.task_weights) != expected:
            raise ValueError(f"loss weighting {weighting.kind!r} has task weights {list(weighting.task_weights)}; "
                             f"the model's tasks with a loss have {expected}")
        self.loss_weighting = weighting

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

    def add_position_tower(self, tasks: Sequence[str], features: Sequence[str] = (),
                           position_feature: str = "position", hidden_units: Sequence[int] = (),
                           position_dropout: float = 0.1) -> None:
        """A shallow tower over ``features`` (default: every training-only input) whose logit is added to the
        outputs of ``tasks`` (the engagement tasks, e.g. ``("ctr",)``) in the train and eval step only."""
        features = list(features) or self.training_only_features
        known = {f.name: f for f in self.schema.inputs}
        for name in features:
            if name not in known:
                raise ValueError(f"model.position_tower.features: {name!r} is not an input feature of the schema "
                                 f"({sorted(known)})")
            if not known[name].training_only:
                # Served features reach the main network: the tower would not be the only reader of the bias.
                raise ValueError(f"model.position_tower.features: feature {name!r} must be training_only, so "
                                 "that serving never sees it")
        task_names = [t.name for t in self.tasks]
        if not tasks or set(tasks) - set(task_names):
            raise ValueError(f"model.position_tower.tasks {list(tasks)} must name one or more of the tasks "
                             f"{task_names}")
        self.position_tower_tasks = tuple(tasks)
        self.position_tower = PositionBiasTower(
            self.embedding_view(features, name="position_tower_features"), position_feature=position_feature,
            hidden_units=hidden_units, position_dropout=position_dropout, name="position_tower")

    def with_position_bias(self, outputs: dict, features, training: bool) -> dict:
        """``outputs`` with the position tower's logit added to its tasks' (as they are without a tower, or
        when the batch has no selection-bias features outside training)."""
        if self.position_tower is None:
            return outputs
        if not self.has_features(features, self.position_tower.feature_names):
            if training:
                raise ValueError(f"the position tower needs features {self.position_tower.feature_names} in "
                                 f"every training batch; the batch has {sorted(features)}")
            return outputs
        bias = self.position_tower(features, training=training)
        return {**outputs, **{name: add_bias_logit(outputs[name], bias) for name in self.position_tower_tasks}}

    def build_training_towers(self, features) -> None:
        """Creates the variables of the towers that only the step calls (the position tower), so an optimizer
        built before ``fit`` has slots for them."""
        if self.position_tower is not None:
            self.position_tower(features, training=False)

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

    def _with_label_inputs(self, features, labels) -> dict:
        """``features`` plus the ``label_inputs`` labels and their lengths (``features`` when there are none)."""
        if not self.label_inputs:
            return features
        wanted = set(self.label_inputs) | {name + LENGTH_SUFFIX for name in self.label_inputs}
        return {**features, **{name: value for name, value in labels.items() if name in wanted}}

    def _step_loss(self, data, training: bool):
        """``(total, losses)``: this replica's share of the combined loss, and the step's ``TaskLosses``."""
        features, labels = data
        outputs = self.training_outputs(self._with_label_inputs(features, labels), training=training)
        outputs = self.with_position_bias(outputs, features, training)
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
        extra = tf.constant(0.0)
        # Read once: each read of Keras' ``losses`` builds every weight regulariser's ops again.
        added_losses = self.losses
        if added_losses:
            extra = tf.nn.scale_regularization_loss(tf.add_n([tf.cast(l, tf.float32) for l in added_losses]))
        total = extra
        if loss_tasks:
            # The global Σ m·w of each task: each replica divides its own numerator by it, so the replicas'
            # gradients sum to the gradient of the global weighted mean. The global numerators come in the
            # same all-reduce, for the weightings that read the global losses.
            global_sums = tf.stack([tf.stop_gradient(tf.stack(numerators)), tf.stack(denominators)])
            context = tf.distribute.get_replica_context()
            if context is not None:
                global_sums = context.all_reduce(tf.distribute.ReduceOp.SUM, global_sums)
            losses = TaskLosses(shares=[tf.math.divide_no_nan(numerators[i], global_sums[1, i])
                                        for i in range(len(loss_tasks))],
                                global_means=tf.math.divide_no_nan(global_sums[0], global_sums[1]), extra=extra)
            total += self.loss_weighting.combine(losses, training)
        else:
            losses = TaskLosses(shares=[], global_means=tf.zeros([0]), extra=extra)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # Each replica adds its share times the replica count, so the Mean over replicas is the global loss.
        self._step.loss.update_state(total * replicas)
        for task in self.tasks:
            if self._step.tasks[task.name]:
                task.update_metrics(self._step.tasks[task.name], columns[task.name], outputs[task.name],
                                    weights[task.name])
        if not training:
            self.update_evaluation_metrics(features, labels, outputs)
        return total, losses

    def train_step(self, data):
        task_gradients = self.loss_weighting.uses_task_gradients
        with tf.GradientTape(persistent=task_gradients) as tape:
            loss, losses = self._step_loss(data, training=True)
        if task_gradients:
            gradients = self.loss_weighting.gradients(tape, losses, self.trainable_variables, self.optimizer)
            self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        else:
            # minimize (not tape.gradient + apply_gradients) so a LossScaleOptimizer scales the loss (float16).
            self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return self._train_logs()

    def _train_logs(self) -> dict:
        evaluation_only = {id(metric) for metric in self.evaluation_metrics}
        return {metric.name: metric.result() for metric in self.metrics if id(metric) not in evaluation_only}

    def test_step(self, data):
        self._step_loss(data, training=False)
        return self._test_logs()

    def _test_logs(self) -> dict:
        return {metric.name: metric.result() for metric in self.metrics}

    def fit(self, x=None, y=None, *args, **kwargs):
        """Keras' ``fit``; numpy arrays in ``x``, ``y``, ``sample_weight`` and ``validation_data`` become tensors
        with one copy each instead of Keras' two (``tfrecsys.models.in_memory``), the same tensors."""
        return super().fit(in_memory.as_tensors(x), in_memory.as_tensors(y), *args,
                           **in_memory.keywords_as_tensors(kwargs, ("sample_weight", "validation_data")))

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """Keras' ``evaluate``, its numpy arrays copied once as in ``fit``."""
        return super().evaluate(in_memory.as_tensors(x), in_memory.as_tensors(y), *args,
                                **in_memory.keywords_as_tensors(kwargs, ("sample_weight",)))

    def predict(self, x, *args, **kwargs):
        """Keras' ``predict``, its numpy arrays copied once as in ``fit``."""
        return super().predict(in_memory.as_tensors(x), *args, **kwargs)

    # With steps_per_execution > 1, the step is traced once, not twice, and the first train call runs one
    # step (tfrecsys.models.execution); a family overriding a step keeps Keras' own functions.

    def make_train_function(self, force=False):
        if ((self.train_function is None or force) and execution.multi_step_applies(self)
                and type(self).train_step is RecModel.train_step):
            self.train_function = execution.train_function(self, self._train_logs)
            return self.train_function
        return super().make_train_function(force=force)

    def make_test_function(self, force=False):
        if ((self.test_function is None or force) and execution.multi_step_applies(self)
                and type(self).test_step is RecModel.test_step):
            self.test_function = execution.test_function(self, self._test_logs)
            return self.test_function
        return super().make_test_function(force=force)
