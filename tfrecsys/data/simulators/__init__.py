"""Seeded simulators with known ground truth, one per model family.

| kind | for | ground truth |
|---|---|---|
| ``click_log`` | dnn, two-tower | click probability, latent vectors, item exposure |
| ``retrieval`` | two-tower | item popularity, the true P(item given user), latent vectors |
| ``sequential`` | DIN, DIEN, SIM, HSTU | drifting current interest, long-term interests, click probability |
| ``position_bias`` | position-bias towers; shared-bottom, MMoE, PLE, ESMM, ESM² | examination curve per device and position, relevance, pCVR, pCTCVR over every impression, task correlation, actions |
| ``delayed_feedback`` | DEFUSE | conversion delay distribution, IP/FN/RN types, p(x) and f_dp(x) |
| ``click_log_stream`` | streaming training | the click log's, written as time-window files (``time_windows.py``) |
| ``sequential_next_item`` | generative (SASRec, HSTU) | the ``sequential`` world's clicks as next-item rows (``tfrecsys.data.next_item``) |
| ``delayed_feedback_stream`` | DEFUSE streaming | the delayed-feedback clicks as one method's training stream |

A config's ``data.simulator`` block picks one with ``kind`` (``click_log`` when absent); the other keys are
the simulator's settings. ``write_from_config(block, output_dir)`` writes train/eval shards,
``metadata.json`` and ``ground_truth.npz`` (``retrieval`` also ``candidates.tfrecord`` and
``item_frequency.tsv``, the layout of ``tfrecsys.data.retrieval_data``).
"""

from tfrecsys.data.simulators import click_log
from tfrecsys.data.simulators.delayed_feedback import (DelayedFeedbackConfig, simulate_delayed_feedback,
                                                       write_delayed_feedback)
from tfrecsys.data.simulators.delayed_feedback_stream import (DelayedFeedbackStreamConfig,
                                                              write_delayed_feedback_stream)
from tfrecsys.data.simulators.position_bias import PositionBiasConfig, simulate_position_bias, write_position_bias
from tfrecsys.data.simulators.retrieval import RetrievalWorldConfig, write_retrieval_world
from tfrecsys.data.simulators.sequential import (SequentialConfig, simulate_sequential, write_sequential,
                                                 write_sequential_next_item)
from tfrecsys.data.simulators.time_windows import ClickLogStreamConfig, write_click_log_stream

SIMULATORS = {
    "click_log": (click_log.ClickLogConfig, click_log.write_click_log),
    "retrieval": (RetrievalWorldConfig, write_retrieval_world),
    "sequential": (SequentialConfig, write_sequential),
    "sequential_next_item": (SequentialConfig, write_sequential_next_item),
    "position_bias": (PositionBiasConfig, write_position_bias),
    "delayed_feedback": (DelayedFeedbackConfig, write_delayed_feedback),
    "click_log_stream": (ClickLogStreamConfig, write_click_log_stream),
    "delayed_feedback_stream": (DelayedFeedbackStreamConfig, write_delayed_feedback_stream),
}


def write_from_config(block, output_dir: str) -> dict:
    """Runs the simulator named by ``block["kind"]`` (default ``click_log``) with the block's other keys."""
    values = dict(block)
    kind = values.pop("kind", "click_log")
    if kind not in SIMULATORS:
        raise ValueError(f"data.simulator.kind {kind!r} is not one of {sorted(SIMULATORS)}")
    settings, write = SIMULATORS[kind]
    return write(settings.from_config(values), output_dir)


__all__ = ["SIMULATORS", "write_from_config", "SequentialConfig", "simulate_sequential", "write_sequential",
           "PositionBiasConfig", "simulate_position_bias", "write_position_bias",
           "DelayedFeedbackConfig", "simulate_delayed_feedback",
           "write_delayed_feedback", "ClickLogStreamConfig", "write_click_log_stream"]
