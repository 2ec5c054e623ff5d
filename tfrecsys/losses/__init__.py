"""Losses that Keras does not ship: sampled softmax for retrieval."""
