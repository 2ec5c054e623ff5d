"""Beam batch scoring: TFRecord or Parquet rows in, keyed rows of one or more models out.

Scoring depends only on the SavedModel contract (the ``serving_examples`` signature over serialized
examples, and what ``saved_model.pb`` and ``assets.extra/tfrecsys.json`` say about it), never on tfrecsys
model code, so any conforming export can be scored, ranking (``score`` mode) or retrieval (``retrieve`` mode:
top-K rows per user). Rows that cannot be scored go to a dead-letter output with the reason.

Modules: ``saved_models`` (resolving and describing a SavedModel without loading it), ``inputs`` (reading
TFRecord and Parquet), ``rows`` (keys, feature checks, Parquet rows as examples, dead letters),
``model_handler`` (the RunInference handler), ``outputs`` (output rows and formats), ``pipeline`` (the job).
"""
