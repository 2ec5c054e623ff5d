"""A Beam RunInference model handler that scores batches of serialized tf.train.Example with a SavedModel.

Beam's own ``TFModelHandlerTensor`` loads models with ``tf.keras.models.load_model``, which rejects plain
``tf.saved_model.save`` exports (see stack-pins-and-gotchas.md, Q3), and it feeds positional tensors rather
than a named signature. This handler loads with ``tf.saved_model.load`` and calls one named signature, so it
scores any export that follows the contract, with nothing from tfrecsys' model code needed.

Its elements are whole batches (``KeyedBatch``: the rows of one source file that this model scores), made
by the pipeline when it reads; RunInference's own per-row batching is skipped (``should_skip_batching``),
because a Python element per row costs more than the model call itself for small ranking models.

A row the model's parsing rejects (a missing feature, a wrong dtype) makes the whole signature call fail.
Only then is the batch looked at row by row: against the feature needs in the export's schema when it has
one (rejecting each bad row with what is wrong), and by scoring halves of the batch on their own, down to
single rows, for whatever remains (rejecting with TensorFlow's own message, ``2·log2(batch)`` extra calls
per bad row). The good rows of the batch are scored either way; clean batches cost one call.
"""

import dataclasses
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from tfrecsys.contract import SERVING_TAG
from tfrecsys.scoring.rows import KeyedBatch, first_problem, short_tf_message
from tfrecsys.scoring.saved_models import ScoringModel, ensure_tensorflow_filesystem

DEFAULT_BATCH_SIZE = 1024


@dataclasses.dataclass
class BatchScores:
    """The model's outputs for the rows of a ``KeyedBatch`` it scored, and the rows it rejected.

    Attributes:
      rows: indices into the batch of the scored rows, ascending.
      outputs: output name -> array ``[len(rows), ...]``, row ``i`` belonging to batch row ``rows[i]``.
      rejected: ``(batch row index, reason)`` for each row the model failed on.
    """
    rows: np.ndarray
    outputs: dict[str, np.ndarray]
    rejected: list[tuple[int, str]]


class SavedModelBatchHandler(ModelHandler[KeyedBatch, PredictionResult, Any]):
    """Scores ``KeyedBatch`` elements with the examples signature of one SavedModel.

    Each element yields one ``PredictionResult`` whose ``example`` is the batch, ``inference`` its
    ``BatchScores`` and ``model_id`` the SavedModel directory, so every score says which version made it.
    """

    def __init__(self, model: ScoringModel):
        super().__init__()
        self.model = model

    def load_model(self) -> Any:
        """Loads the SavedModel on a worker (once per process, as RunInference shares it)."""
        ensure_tensorflow_filesystem(self.model.model_dir)
        return tf.saved_model.load(self.model.model_dir, tags=[SERVING_TAG])

    def should_skip_batching(self) -> bool:
        return True

    def run_inference(self, batch: KeyedBatch, model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        signature = model.signatures[self.model.signature.name]
        scored: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        rejected: list[tuple[int, str]] = []
        indices = np.arange(len(batch.records))
        if self._call(signature, batch.records, indices, scored) is not None:
            indices = self._rows_that_parse(batch.records, indices, rejected)
            self._score_or_split(signature, [batch.records[row] for row in indices], indices, scored, rejected)
        if scored:
            # Halves are scored left before right, so the chunks come in row order.
            rows = np.concatenate([chunk_rows for chunk_rows, _ in scored])
            outputs = {name: self._concatenate(name, [chunk[name] for _, chunk in scored]) for name in scored[0][1]}
        else:
            rows, outputs = np.zeros([0], np.int64), {}
        return [PredictionResult(batch, BatchScores(rows, outputs, sorted(rejected)), self.model.model_dir)]

    def _call(self, signature, records: Sequence[bytes], indices: np.ndarray, scored: list) -> Optional[str]:
        """Scores ``records`` into ``scored``; returns why the model rejected them instead, if it did.

        A parse failure is an InvalidArgumentError; when the row is not an Example at all, TensorFlow's
        message quotes its bytes and Python fails to decode the message: the UnicodeDecodeError.
        """
        try:
            outputs = signature(**{self.model.input_name: tf.constant(list(records), dtype=tf.string)})
        except tf.errors.InvalidArgumentError as error:
            return short_tf_message(error.message)
        except UnicodeDecodeError:
            return "the model could not parse the row as a tf.train.Example"
        scored.append((indices, {name: self._batch_major(name, tensor.numpy(), len(records))
                                 for name, tensor in outputs.items()}))
        return None

    def _rows_that_parse(self, records: Sequence[bytes], indices: np.ndarray, rejected: list) -> np.ndarray:
        """After a failed call: the rows that meet the model's exact feature needs (the export's schema);
        the others are rejected with what is wrong. All rows when the needs are not known exactly."""
        needs = self.model.needs
        if needs is None or not needs.exact:
            return indices
        kept = []
        for row in indices:
            problem = first_problem(records[row], needs.features)
            if problem is None:
                kept.append(row)
            else:
                rejected.append((int(row), problem))
        return np.asarray(kept, dtype=np.int64)

    def _score_or_split(self, signature, records: Sequence[bytes], indices: np.ndarray,
                        scored: list, rejected: list) -> None:
        """Scores ``records``; when the model rejects them, scores each half on its own, down to single rows."""
        if not len(records):
            return
        problem = self._call(signature, records, indices, scored)
        if problem is None:
            return
        if len(records) == 1:
            rejected.append((int(indices[0]), problem))
            return
        middle = len(records) // 2
        self._score_or_split(signature, records[:middle], indices[:middle], scored, rejected)
        self._score_or_split(signature, records[middle:], indices[middle:], scored, rejected)

    def _batch_major(self, output_name: str, array: np.ndarray, batch_size: int) -> np.ndarray:
        """Checks that an output has one entry per input row, since rows are matched along axis 0."""
        if array.ndim == 0 or array.shape[0] != batch_size:
            raise ValueError(
                f"Output {output_name!r} of signature {self.model.signature.name!r} of {self.model.model_dir} has "
                f"shape {array.shape} for a batch of {batch_size}; scoring needs outputs shaped [batch, ...]")
        return array

    def _concatenate(self, output_name: str, chunks: list[np.ndarray]) -> np.ndarray:
        if len({chunk.shape[1:] for chunk in chunks}) > 1:
            raise ValueError(f"Output {output_name!r} of {self.model.model_dir} changed shape between calls "
                             f"({sorted({chunk.shape[1:] for chunk in chunks})}); scoring needs one shape per row")
        return np.concatenate(chunks)

    def get_num_bytes(self, batch: KeyedBatch) -> int:
        """The batch's size in bytes, for Beam's metrics; cheaper than the default pickling."""
        return sum(len(record) for record in batch.records)

    def get_metrics_namespace(self) -> str:
        return f"RunInference[{self.model.label}]"

    def validate_inference_args(self, inference_args: Optional[Mapping[str, Any]]):
        """Rejects inference args: the signature takes only the serialized examples."""
        if inference_args:
            raise ValueError(f"SavedModelBatchHandler takes no inference_args, got {sorted(inference_args)}")
