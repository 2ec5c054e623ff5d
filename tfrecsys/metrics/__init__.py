"""Evaluation metrics that Keras does not ship: full-corpus retrieval metrics, GAUC, calibration, weighted means.

Every metric a model keeps, ours and Keras' alike, is built with a float32 dtype policy (``METRIC_DTYPE``),
whatever the global one: under a mixed precision policy Keras would wrap its state in AutoCastVariables,
and under a distribution strategy reading those in ``result()`` (slicing, Python operators: Keras' own PR-AUC
does) fails, "read_value() inside variable_sync_on_read_context is not supported". A metric's state is a
sum, no place for 16-bit arithmetic anyway.
"""

import tensorflow as tf

METRIC_DTYPE = tf.float32
