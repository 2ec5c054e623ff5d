"""Beam batch scoring: TFRecords of tf.train.Example in, keyed JSON-lines scores out.

Scoring depends only on the SavedModel contract (the ``serving_examples`` signature over serialized
examples), never on tfrecsys model code, so any conforming export can be scored.
"""
