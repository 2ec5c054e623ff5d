"""The names of the SavedModel contract (../shared/DESIGN.md), spelled once.

Export writes them, and serving clients, batch scoring and ``tfrecsys-query`` read them; all of those import
them from here. This module imports nothing of tfrecsys, so scoring and serving can use it without model
code. The feature schema an export records under ``schema`` in ``METADATA_FILE`` is decoded by
``tfrecsys.features.schema.FeatureSchema.from_json``, the one decoder of that JSON.
"""

import os

# TF Serving loads the meta graph with this tag.
SERVING_TAG = "serve"
SAVED_MODEL_FILE = "saved_model.pb"

# Raw named features: ids, dense values, sequences as padded ``[batch, max_len]`` plus ``<name>_length``.
SERVING_DEFAULT = "serving_default"
# Serialized tf.train.Example in the ``inputs`` string tensor (the input name TF Serving's Classify and
# Regress use); parsed inside the SavedModel with the training schema.
SERVING_EXAMPLES = "serving_examples"
EXAMPLES_INPUT = "inputs"
CLASSIFY_PREFIX = "classify_"
REGRESS_PREFIX = "regress_"
CLASSIFY_SCORES = "scores"
REGRESS_OUTPUTS = "outputs"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# The ``[batch]`` int64 input beside a padded sequence ``<name>`` that holds its valid length.
LENGTH_SUFFIX = "_length"

# Files beside the SavedModel that TF Serving reads (warmup) or ignores (tfrecsys's own metadata: model
# name, version, outputs, signatures and the feature schema as ``FeatureSchema.to_json`` writes it).
ASSETS_EXTRA_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = os.path.join(ASSETS_EXTRA_DIR, "tfrecsys.json")
