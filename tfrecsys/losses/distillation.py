"""Knowledge distillation from an offline teacher into an online student (digest B.3: "student log-loss +
teacher–student cross-entropy, weight ratio 1 : 0.2").

Per row of a binary output with label ``y``, student probability ``s`` and teacher probability ``t``:

    L = BCE(y, s) + λ · CE(t, s),    CE(t, s) = −t log s − (1 − t) log(1 − s),    λ = 0.2 by the practice

The teacher term keeps the student, updated window by window on a drifting stream, near the offline model.
``RecModel`` adds ``λ · CE(t, s)`` to the task loss of every distilled output in training (``distill``);
evaluation keeps the plain loss.
"""

import dataclasses
from typing import Mapping

import tensorflow as tf


def teacher_cross_entropy(teacher, student):
    """``CE(t, s)`` per row ``[batch]`` float32 of teacher probabilities ``t`` and student probabilities
    ``s`` (both ``[batch]``): Keras' binary cross-entropy with a soft target."""
    teacher = tf.cast(tf.reshape(teacher, [-1, 1]), tf.float32)
    student = tf.cast(tf.reshape(student, [-1, 1]), tf.float32)
    return tf.keras.backend.binary_crossentropy(teacher, student)[:, 0]


@dataclasses.dataclass(frozen=True)
class Distillation:
    """What a model distils: ``teacher_columns`` ``((output, column), …)``, the batch column (label or
    feature) that holds the teacher's probability for each distilled output, and the weight ``λ``."""
    teacher_columns: tuple
    weight: float = 0.2

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"distillation weight must be non-negative, got {self.weight}")

    @property
    def outputs(self) -> dict:
        return dict(self.teacher_columns)

    def row_losses(self, output: str, student, features: Mapping, labels: Mapping):
        """``λ · CE(t, s)`` ``[batch]`` for ``output``, the teacher's column read from the labels first, then the
        features. A dict ``student`` (a loss that reads logits and auxiliary outputs, e.g. the delayed-feedback
        CVR losses) gives its ``probability``, the served prediction the teacher's is compared with."""
        column = self.outputs[output]
        if column in labels:
            teacher = labels[column]
        elif column in features:
            teacher = features[column]
        else:
            raise KeyError(f"distillation of output {output!r} reads the teacher column {column!r}, which the "
                           f"batch does not hold; it has labels {sorted(labels)} and features {sorted(features)}")
        if isinstance(student, Mapping):
            student = student["probability"]
        return self.weight * teacher_cross_entropy(teacher, student)
