"""Behaviour histories against their target: what DIN, DIEN and SIM compare.

A behaviour history is one or more aligned sequence features (item ids, and their categories), each sharing
the table of an id feature of the candidate (``hist_item_id`` shares ``item_id``). Concatenated, the history
``e_j = [e_item,j ; e_category,j]`` ``[batch, len, d]`` and the target ``v_A = [e_item ; e_category]``
``[batch, d]`` live in one space, which target attention and the auxiliary loss need.
"""

import dataclasses
from typing import Mapping, Sequence

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
                      targets: Sequence[str] = ()) -> BehaviourHistory:
    """Checks ``sequences`` (config ``what``) and pairs each with the id feature it shares.

    The sequences must be embedded, of one length, aligned (all but one ``aligned_with`` the first one, or with
    the first one's primary), and each must share an id feature. ``targets``, if given, is the order of the id
    features they must share (a negative history follows the positive one's tables).
    """
    sequences = tuple(sequences)
    if not sequences:
        raise ValueError(f"{what} is empty: name the history's sequence features, e.g. ('hist_item_id', "
                         "'hist_category')")
    features = []
    for name in sequences:
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
    shared = tuple(feature.shares for feature in features)
    if targets and tuple(targets) != shared:
        raise ValueError(f"{what} shares the tables {list(shared)}; it must share {list(targets)}, in that "
                         "order, to be compared with the history")
    return BehaviourHistory(sequences, shared)
