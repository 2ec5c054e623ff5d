"""The delayed-feedback simulator's clicks turned into a method's training stream (``delayed_feedback_stream``).

``data.simulator.kind = "delayed_feedback_stream"``: every ``DelayedFeedbackConfig`` setting (the world, ``w_o``
and ``w_a``) except its train/eval split, plus ``method`` (``tfrecsys.data.delayed_feedback_stream.METHODS``),
``window_seconds`` (the streaming windows) and ``pretrain_days`` (the period whose labels are final, trained
on before streaming). The clicks go through the Beam stream builder; ``ground_truth.npz`` holds the
simulator's per-click truth (``p_convert``, ``p_delayed``, ``sample_type``) in click order.
"""

import dataclasses
import os

import numpy as np

from tfrecsys.data.delayed_feedback_stream import build_stream, settings_for
from tfrecsys.data.simulators.common import SECONDS_PER_DAY
from tfrecsys.data.simulators.delayed_feedback import DelayedFeedbackConfig, simulate_delayed_feedback

# DelayedFeedbackConfig settings of the train/eval split, which a stream does not have.
_SPLIT_SETTINGS = ("eval_fraction", "num_shards")
_OWN_SETTINGS = ("method", "window_seconds", "pretrain_days")


@dataclasses.dataclass(frozen=True)
class DelayedFeedbackStreamConfig:
    method: str = "defuse"
    window_seconds: int = 86_400
    pretrain_days: int = 7
    world: DelayedFeedbackConfig = DelayedFeedbackConfig()

    @classmethod
    def from_config(cls, config) -> "DelayedFeedbackStreamConfig":
        values = {k: v for k, v in dict(config).items() if k != "kind"}
        split = sorted(set(values) & set(_SPLIT_SETTINGS))
        if split:
            raise ValueError(f"delayed_feedback_stream settings {split} belong to the train/eval split of "
                             "delayed_feedback; a stream is cut into time windows by window_seconds instead")
        own = {name: values.pop(name) for name in _OWN_SETTINGS if name in values}
        return cls(world=DelayedFeedbackConfig.from_config(values), **own)


def write_delayed_feedback_stream(config: DelayedFeedbackStreamConfig, output_dir: str,
                                  pipeline_args=None) -> dict:
    """Simulates the clicks and writes the method's stream (window files, evaluation clicks, metadata.json)."""
    columns, truth = simulate_delayed_feedback(config.world)
    settings = settings_for(columns, config.method, config.world.observation_window_seconds,
                            config.world.attribution_window_seconds, config.window_seconds,
                            config.pretrain_days * SECONDS_PER_DAY)
    metadata = build_stream(columns, settings, output_dir, pipeline_args)
    np.savez(os.path.join(output_dir, "ground_truth.npz"), example_id=columns["example_id"],
             click_timestamp=columns["click_timestamp"], converted=columns["converted"],
             **{k: truth[k] for k in ("p_convert", "p_immediate", "p_delayed", "sample_type")})
    return {"simulator": "delayed_feedback_stream", "rows": metadata["stream_rows"],
            "conversion_rate": float(columns["converted"].mean()), **metadata}
