"""Behaviour histories against their target: what DIN, DIEN and SIM compare.

A behaviour history is one or more aligned sequence features (item ids, and their categories), each sharing
the table of an id feature of the candidate (``hist_item_id`` shares ``item_id``). Concatenated, the history
``e_j = [e_item,j ; e_category,j]`` ``[batch, len, d]`` and the target ``v_A = [e_item ; e_category]``
``[batch, d]`` live in one space, which target attention and the auxiliary loss need.
"""

import dataclasses
from typing import Mapping, Optional, Sequence

import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema, IdFeature, SequenceFeature


@dataclasses.dataclass(frozen=True)
class BehaviourHistory:
    """``sequences``: the history's sequence features, in concatenation order; ``targets``: the id feature
    each shares, in the same order."""

    sequences: tuple
    targets: tuple

    def keys(self, embedded: Mapping) -> tf.Tensor:
        """``[batch, len, Σ d]``: the sequences' embeddings, concatenated per behaviour."""
        return tf.concat([embedded[name] for name in self.sequences], axis=-1)

    def mask(self, embedded: Mapping) -> tf.Tensor:
        """``[batch, len]`` bool: the valid behaviours (the sequences are aligned, so the first one's mask)."""
        return embedded[self.sequences[0] + "_mask"]

    def query(self, embedded: Mapping) -> tf.Tensor:
        """``[batch, Σ d]``: the candidate's embeddings in the history's order."""
        return tf.concat([embedded[name] for name in self.targets], axis=-1)


def behaviour_history(schema: FeatureSchema, sequences: Sequence[str], what: str = "model.history",
                      targets: Sequence[str] = (), negatives_of: Optional[BehaviourHistory] = None
                      ) -> BehaviourHistory:
    """Checks ``sequences`` (config ``what``) and pairs each with the id feature it shares.

    The sequences must be embedded, of one length, aligned (all but one ``aligned_with`` the first one, or with
    the first one's primary), and each must share an id feature. ``targets``, if given, is the order of the id
    features they must share (a lifelong history follows the recent one's tables). ``negatives_of``: the
    history whose sampled negatives these are (DIEN's negative history): they share its tables in its order,
    are ``aligned_with`` its primary (one negative per behaviour, at its position, under its length) and are
    training-only (serving never computes the auxiliary loss they feed, so clients must not have to send them).
    """
    if negatives_of is not None:
        targets = negatives_of.targets
    sequences = tuple(sequences)
    if not sequences:
        raise ValueError(f"{what} is empty: name the history's sequence features, e.g. ('hist_item_id', "
                         "'hist_category')")
    features = []
    for name in sequences:
        if name not in {feature.name for feature in schema.features}:
            raise ValueError(f"{what} names {name!r}, which is no feature of config.features; its sequence "
                             f"features: {[f.name for f in schema.of_kind(SequenceFeature)]}")
        feature = schema[name]
        if not isinstance(feature, SequenceFeature) or feature.raw:
            raise ValueError(f"{what}: {name!r} is not an embedded sequence feature")
        if feature.shares is None or not isinstance(schema[feature.shares], IdFeature):
            raise ValueError(f"{what}: sequence {name!r} shares no id feature of the candidate, so it has no "
                             "target to be compared with; set shares= (hist_item_id shares item_id)")
        features.append(feature)
    primary = features[0].aligned_with or features[0].name
    for feature in features[1:]:
        if (feature.aligned_with or feature.name) != primary:
            raise ValueError(f"{what}: {feature.name!r} is not aligned with {features[0].name!r} (set "
                             f"aligned_with={primary!r}), so their behaviours do not line up")
    if negatives_of is not None:
        history = negatives_of.sequences[0]
        history_primary = schema[history].aligned_with or history
        for feature in features:
            if feature.aligned_with != history_primary:
                raise ValueError(f"{what}: {feature.name!r} is not aligned with the history {history!r}: the "
                                 "auxiliary loss takes one negative per behaviour, at its position (set "
                                 f"aligned_with={history_primary!r})")
            if not feature.training_only:
                raise ValueError(f"{what}: {feature.name!r} is a serving input: serving never computes the "
                                 "auxiliary loss, so clients would send negatives for nothing (set "
                                 "training_only=True)")
    shared = tuple(feature.shares for feature in features)
    if targets and tuple(targets) != shared:
        raise ValueError(f"{what} shares the tables {list(shared)}; it must share {list(targets)}, in that "
                         "order, to be compared with the history")
    return BehaviourHistory(sequences, shared)
