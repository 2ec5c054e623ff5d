"""Evaluation metrics that Keras does not ship: full-corpus retrieval metrics."""
