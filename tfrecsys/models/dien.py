"""dien: Deep Interest Evolution Network (Zhou et al., AAAI 2019): a GRU extracts interests from the history,
an attention-gated GRU evolves them towards the target."""

import tensorflow as tf

from tfrecsys.features.schema import FeatureSchema
from tfrecsys.layers.augru import (ATTENTION_MOMENTS, AUX_NORMALIZATIONS, GRU_VARIANTS, InterestEvolution,
                                   InterestExtractor, auxiliary_loss)
from tfrecsys.layers.auxiliary_net import AuxiliaryNet
from tfrecsys.layers.mlp import MLP
from tfrecsys.layers.pooling import concat_pooled
from tfrecsys.models.base import RecModel
from tfrecsys.models.behaviours import behaviour_history
from tfrecsys.models.registry import register
from tfrecsys.models.tasks import tasks_from_config


def in_batch_negatives(keys: tf.Tensor, mask: tf.Tensor, seed=None) -> tf.Tensor:
    """``[batch, len, d]``: for every step, a valid behaviour drawn uniformly from the whole batch's histories.

    The negatives of the auxiliary loss when the data has no negative history: real (item, category) pairs,
    drawn with their frequency in the batch (DIEN's paper samples negatives from the item pool; a batch's
    behaviours are such a sample, popularity-weighted). An empty batch yields zeros, which the loss masks.
    """
    valid = tf.boolean_mask(keys, mask)
    pool = tf.concat([valid, tf.zeros_like(keys[:1, 0])], axis=0)
    count = tf.maximum(tf.shape(valid)[0], 1)
    draws = tf.random.uniform(tf.shape(mask), maxval=count, dtype=tf.int32, seed=seed)
    return tf.gather(pool, draws)


AUX_NETS = ("mlp", "inner_product")


class DIEN(RecModel):
    """``h_t = GRU(e_b[t])`` (interest extractor), ``h'_T = AUGRU(h_t, a_t)`` with
    ``a_t = softmax_t(a(h_t, e_a))`` (interest evolution), ``p_task = sigmoid(w_task · MLP([x_other ; h'_T]))``;
    loss ``L_target + α L_aux`` (DIEN eq. 6–7).

    ``history``: the behaviour sequences (``hist_item_id``, ``hist_category``), each sharing a candidate id
    feature, so ``e_b[t]`` and the target ``e_a`` are ``[batch, d]`` in one space; both GRUs have ``d`` units.
    ``gru_variant``: ``augru`` (the paper's), ``agru``, ``aigru`` or ``augru_keep`` (the DIEN authors' code and
    DeepCTR's AUGRU: attention scales the keep gate, ``AttentionGRUCell``). ``aux_weight`` ``α``: 0 turns the auxiliary
    loss off. Its negatives come from ``negative_history`` (training-only sequences aligned with the history
    and sharing the same tables, e.g. one random item per step written by preprocessing) when the batch holds
    them, else from the batch's own behaviours (``in_batch_negatives``). The auxiliary loss enters the step
    through ``add_loss`` whenever the negatives are at hand (training, and evaluation on training-format
    data); serving never computes it. ``aux_net``: the auxiliary network scoring ``(h_t, e_b[t+1])``:
    ``inner_product`` (default: the paper's eq. 6, no weights) or ``mlp`` (``AuxiliaryNet`` with ``aux_units``,
    as the DIEN authors' released code and DeepCTR). Inner product stays the default because on Taobao both
    reach the same AUC (0.852 against 0.859, test SE ≈ 0.011; GAUC and logloss favour the inner product; see
    bench/RESULTS.md) and it adds no weights. ``aux_normalization``: ``valid_pairs`` (default, the mean over
    valid next-step pairs) or ``grid`` (over every ``(row, t)`` slot, as DeepCTR: ``auxiliary_loss``).
    ``gru_gate_bias``: both GRUs' initial gate bias, 0 (Keras') or 1 (``tf.compat.v1``'s GRUCell, as DeepCTR;
    ``GateBiasInitializer``). ``evolution_trainable``: False keeps the interest-evolving GRU's weights at their
    initial values (``InterestEvolution(cell_trainable=False)``; DeepCTR 0.9.4's DIEN never trains them on TF 2).
    ``recurrence_xla``: the two GRUs' step loops XLA-compiled in training (``gated_recurrence``; evaluation,
    prediction and the exported signatures run them plain): about 19% less CPU per training step on a quiet
    machine, for two XLA compilations per training batch shape (the two GRUs share one compiled loop pair),
    a few tenths of a second of the first step; False runs them plain.
    ``gru_reset_after``: True (Keras' GRU form) or False, both GRUs' candidate reset before its matmul and their
    kernels drawn as ``tf.compat.v1``'s GRUCell's (DeepCTR's; ``gated_recurrence``). ``attention_moments``: where
    the evolution's attention Dice takes its batch moments, ``valid`` steps or ``every_slot`` (DeepCTR's;
    ``InterestEvolution``).
    Their defaults are not DeepCTR's: a change is to be chosen on the validation split. Outputs
    ``{task: [batch]}``.
    """

    def __init__(self, schema: FeatureSchema, tasks, history, negative_history=(), gru_variant="augru",
                 aux_weight=1.0, aux_net="inner_product", aux_units=(100, 50), attention_units=(64, 16),
                 attention_activation="dice", hidden_units=(200, 80), dropout=0.0, aux_normalization="valid_pairs",
                 gru_gate_bias=0.0, evolution_trainable=True, recurrence_xla=True, gru_reset_after=True,
                 attention_moments="valid", **kwargs):
        super().__init__(schema, tasks, **kwargs)
        if gru_variant not in GRU_VARIANTS:
            raise ValueError(f"model.gru_variant must be one of {GRU_VARIANTS}, got {gru_variant!r}")
        if aux_net not in AUX_NETS:
            raise ValueError(f"model.aux_net must be one of {AUX_NETS}, got {aux_net!r}")
        if aux_normalization not in AUX_NORMALIZATIONS:
            raise ValueError(f"model.aux_normalization must be one of {AUX_NORMALIZATIONS}, "
                             f"got {aux_normalization!r}")
        if attention_moments not in ATTENTION_MOMENTS:
            raise ValueError(f"model.attention_moments must be one of {ATTENTION_MOMENTS}, got {attention_moments!r}")
        self.aux_normalization = aux_normalization
        self.behaviours = behaviour_history(schema, history)
        self.negative_history = (behaviour_history(schema, negative_history, "model.negative_history",
                                                   negatives_of=self.behaviours) if negative_history else None)
        self.aux_weight = aux_weight
        self.aux_net = AuxiliaryNet(aux_units, name="auxiliary_net") if aux_net == "mlp" and aux_weight else None
        self.other_features = [name for name in self.serving_features if name not in self.behaviours.sequences]
        self.embedding = self.embedding_view(self.serving_features, name="features")
        if self.negative_history is not None:
            self.negative_embedding = self.embedding_view(self.negative_history.sequences, name="negatives")
        units = sum(schema[name].embedding_dim for name in self.behaviours.targets)
        self.extractor = InterestExtractor(units, gru_gate_bias, xla=recurrence_xla, reset_after=gru_reset_after,
                                           name="interest_extractor")
        self.evolution = InterestEvolution(units, gru_variant, attention_units, attention_activation,
                                           gru_gate_bias, cell_trainable=evolution_trainable, xla=recurrence_xla,
                                           reset_after=gru_reset_after, attention_moments=attention_moments,
                                           name="interest_evolution")
        self.tower = MLP(hidden_units, dropout=dropout, name="tower")
        self.heads = {task.name: tf.keras.layers.Dense(1, name=f"{task.name}_logit", dtype="float32")
                      for task in self.tasks}

    def call(self, features, training=None):
        embedded = self.embedding(features)
        behaviours, mask = self.behaviours.keys(embedded), self.behaviours.mask(embedded)
        interests = self.extractor(behaviours, mask, training=training)
        evolved = self.evolution(interests, mask, self.behaviours.query(embedded), training=training)
        if self.aux_weight:
            negatives = self.auxiliary_negatives(features, behaviours, mask, training)
            if negatives is not None:
                self.add_loss(self.aux_weight * auxiliary_loss(interests, behaviours, negatives, mask,
                                                               scorer=self.aux_net,
                                                               normalization=self.aux_normalization))
        hidden = self.tower(tf.concat([concat_pooled(embedded, self.schema, self.other_features), evolved], -1),
                            training=training)
        return {name: tf.sigmoid(tf.squeeze(head(hidden), axis=-1)) for name, head in self.heads.items()}

    def auxiliary_negatives(self, features, behaviours, mask, training):
        """The negative behaviours ``ê_b`` ``[batch, len, d]``, or None where the auxiliary loss does not apply
        (serving, or evaluation without a negative history)."""
        if self.negative_history is not None:
            if not self.has_features(features, self.negative_history.sequences):
                return None
            return self.negative_history.keys(self.negative_embedding(features))
        return in_batch_negatives(behaviours, mask) if training else None


@register("dien")
def build_dien(config, schema: FeatureSchema, tables=None) -> DIEN:
    model = config.model
    return DIEN(schema, tasks_from_config(config.tasks, schema), history=tuple(model.history),
                negative_history=tuple(model.negative_history), gru_variant=model.gru_variant,
                aux_weight=model.aux_weight, aux_net=model.aux_net, aux_units=tuple(model.aux_units),
                attention_units=tuple(model.attention_units), attention_activation=model.attention_activation,
                hidden_units=tuple(model.hidden_units), dropout=model.dropout,
                aux_normalization=model.aux_normalization, gru_gate_bias=model.gru_gate_bias,
                evolution_trainable=model.evolution_trainable, recurrence_xla=model.recurrence_xla,
                gru_reset_after=model.gru_reset_after, attention_moments=model.attention_moments, name="dien")
