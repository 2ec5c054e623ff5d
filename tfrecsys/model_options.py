"""Every model family's ``config.model`` options and their defaults, declared once (docs/model-options.md).

An option is ``name: default``; ``required(type)`` is one with no default that the config must set, and
``unset(type)`` one with no default that only some settings read (ESMM's backbone sizes, needed by the
backbone it names). A non-empty dict default is a nested block with its own options (``position_tower``,
``estimator``, ``hstu``); an empty one is free-form and checked where it is used (``history_labels`` against
the tasks).

Pure Python, no TensorFlow: ``configs/base.py`` fills a config's ``model`` block from here (``model_block``)
before the file sets its own values, so that every option can be overridden from the command line
(docs/model-options.md lists them: absl's ``--helpfull`` shows no config field); ``build_model``
(``tfrecsys.models.registry``) checks a config against it (``resolve``) and the builders read
``config.model.<option>`` with no default of their own.
"""

import dataclasses
import difflib
import re

import ml_collections
from ml_collections.config_dict import placeholder

OPTIONS_DOC = "docs/model-options.md"


@dataclasses.dataclass(frozen=True)
class NoDefault:
    """An option without a default; ``type`` is what a command-line override of it parses."""

    type: type
    required: bool


def required(kind: type) -> NoDefault:
    return NoDefault(kind, required=True)


def unset(kind: type) -> NoDefault:
    return NoDefault(kind, required=False)


# RecModel.add_position_tower's arguments (a test checks they match its signature's defaults).
POSITION_TOWER = {
    "tasks": (),                       # outputs the tower's logit is added to in training; (): no tower
    "features": (),                    # the tower's inputs; (): every training-only input
    "position_feature": "position",
    "hidden_units": (),
    "position_dropout": 0.1,           # share of training rows whose position the tower does not see
}

# Taken by every family (applied in build_model after the family's builder).
COMMON = {
    "name": required(str),             # the family: a key of FAMILIES
    "fused_embeddings": False,         # every table of one width in one variable (EmbeddingTables.pack_by_width)
    "embedding_l2": 0.0,               # L2 over the whole tables (EmbeddingTables.regularize); 0: none
    "embedding_init_stddev": 0.0,      # rows start N(0, stddev²); 0: truncated N(0, 0.05²)
    "position_tower": POSITION_TOWER,  # a shallow position-bias tower (tfrecsys/models/base.py)
}

# HSTULayer's arguments (tfrecsys/layers/hstu.py; a test checks the names and defaults). The unset ones the model
# derives from its own options unless the config sets them.
HSTU_LAYER = {
    "num_heads": unset(int),                 # default: the model's num_heads
    "attention_dim": unset(int),             # per head; default: embedding_dim / num_heads
    "value_dim": unset(int),                 # per head; default: attention_dim
    "max_seq_len": unset(int),               # N of A = SiLU(·) / N; default: the tokens a row can hold
    "dropout": unset(float),                 # default: the model's dropout
    "num_position_buckets": 128,
    "position_buckets_per_doubling": 8,
    "num_time_buckets": 128,
    "time_buckets_per_doubling": 4,
    "input_norm": True,                      # the pre-LayerNorm on X
    "attention_path": "padded",              # padded | xla | jagged; exports take the padded one
    "length_buckets": (64, 128, 256, 512, 1024, 2048, 4096, 8192),  # the xla path's padded lengths
    "jagged_groups": 8,                      # length groups of the jagged path
    "attention_block_size": 256,             # query rows of one causal block; 0: none
}

# tfrecsys.metrics.retrieval.DEFAULT_KS (a test checks it).
RETRIEVAL_KS = (10, 50, 100)

# The towers over a multi-task backbone (tfrecsys/models/multitask.py).
MULTITASK_TOWERS = {
    "tower_units": (),                 # each task's tower MLP
    "dropout": 0.0,
    "dense_batch_norm": False,         # standardise the dense inputs (raw columns such as capital gains)
}

FAMILIES = {
    "logistic_regression": {},
    "dnn": {
        "hidden_units": required(tuple),
        "dropout": 0.0,
    },
    "din": {
        "history": required(tuple),            # behaviour sequences, each sharing a candidate id's table
        "attention_units": (80, 40),
        "attention_activation": "dice",
        "hidden_units": (200, 80),
        "dropout": 0.0,
        "mba_l2": 0.0,                         # mini-batch-aware L2 on the rows a batch looks up
        "attention_normalization": "none",     # none (DIN's raw weights) | softmax
    },
    "dien": {
        "history": required(tuple),
        "negative_history": (),                # training-only negatives of the auxiliary loss; (): in-batch
        "gru_variant": "augru",                # the interest evolution GRU: aigru | agru | augru | augru_keep
        "aux_weight": 1.0,                     # the auxiliary loss's weight; 0: none
        "aux_net": "inner_product",            # mlp | inner_product
        "aux_units": (100, 50),                # the auxiliary MLP (aux_net=mlp)
        "attention_units": (64, 16),
        "attention_activation": "dice",
        "hidden_units": (200, 80),
        "dropout": 0.0,
        "aux_normalization": "valid_pairs",    # the auxiliary loss's mean: valid_pairs | grid
        "gru_gate_bias": 0.0,
        "evolution_trainable": True,
        "recurrence_xla": True,                # the recurrences compiled with XLA
        "gru_reset_after": True,               # False: the reset gate before the recurrent matmul (DeepCTR's)
        "attention_moments": "valid",          # Dice's batch moments over: valid (history slots) | every_slot
    },
    "sim": {
        "recent_history": required(tuple),
        "lifelong_history": required(tuple),
        "lifelong_timestamps": required(str),  # raw int64 sequence aligned with the lifelong history
        "request_time": required(str),         # int64 dense serving feature
        "search": "hard",                      # hard | soft
        "hard_search": ("", ""),               # (history category feature, target category feature)
        "top_k": 50,                           # behaviours the search unit keeps
        "soft_search_dim": 16,
        "gsu_task": "gsu",                     # soft search's auxiliary task (a key of config.tasks)
        "num_heads": 2,
        "head_dim": 16,
        "time_buckets": 24,
        "time_embedding_dim": 8,
        "time_unit_seconds": 60.0,
        "attention_hidden_units": (80, 40),    # the recent history's DIN attention
        "attention_activation": "dice",
        "hidden_units": (128, 64),
        "dropout": 0.0,
    },
    "defuse": {
        "method": required(str),               # the loss: tfrecsys/models/defuse.py METHOD_LOSSES
        "hidden_units": required(tuple),
        "auxiliary_hidden_units": (64,),       # the auxiliary models' tower
        "expert_units": 32,
    },
    "two_tower": {
        "query_features": required(tuple),
        "candidate_features": required(tuple),
        "candidate_id": required(str),
        "hidden_units": required(tuple),
        "output_dim": required(int),
        "dropout": 0.0,
        "temperature": required(float),
        "negatives": required(str),            # in_batch | sampled | mixed
        "num_sampled": 0,                      # corpus negatives per step (sampled, mixed)
        "sampler_alpha": 0.0,                  # sampled negatives ∝ count^α; 0: uniform
        "logq": required(str),                 # none | table | streaming
        "remove_accidental_hits": True,
        # The streaming frequency estimator (logq=streaming; a test checks StreamingFrequencyEstimator's).
        "estimator": {"num_buckets": 1 << 18, "num_hashes": 3, "alpha": 0.01},
        "eval_ks": RETRIEVAL_KS,
        "export_k": 100,
    },
    "generative": {
        "history_feature": required(str),
        "timestamp_feature": required(str),
        "label_feature": required(str),        # the next item at each history position
        "candidate_id": required(str),
        "encoder": required(str),              # hstu | sasrec
        "num_blocks": required(int),
        "num_heads": required(int),
        "dropout": required(float),
        "temperature": required(float),
        "negatives": required(str),            # uniform | in_batch
        "num_sampled": 0,
        "eval_ks": RETRIEVAL_KS,
        "export_k": 100,
        "hstu": HSTU_LAYER,                    # the HSTU encoder's layers (encoder=hstu)
    },
    "hstu_ranking": {
        "history_feature": required(str),
        "action_feature": required(str),
        "timestamp_feature": required(str),
        "candidate_id": required(str),
        "num_actions": required(int),          # rows of the action table
        "candidate_timestamp_feature": "",     # dense int64 request time; "": the last history event's
        "num_blocks": required(int),
        "num_heads": required(int),
        "dropout": required(float),
        "hidden_units": (),                    # each task's tower
        "hstu": HSTU_LAYER,                    # the HSTU encoder's layers
        "history_labels": {},                  # {task: a}: also train at history items, label action >= a
        "history_weight": 1.0,
    },
    "shared_bottom": {
        "bottom_units": required(tuple),
        **MULTITASK_TOWERS,
    },
    "mmoe": {
        "num_experts": required(int),
        "expert_units": required(tuple),
        **MULTITASK_TOWERS,
    },
    "ple": {
        "num_levels": required(int),
        "shared_experts": required(int),       # per level
        "task_experts": required(int),         # per task and level
        "expert_units": required(tuple),
        **MULTITASK_TOWERS,
    },
}
# ESMM and ESM²: the towers on any backbone, whose sizes are needed only by the backbone named.
ENTIRE_SPACE = {
    "backbone": "none",                        # none | shared_bottom | mmoe | ple
    "bottom_units": unset(tuple),              # backbone=shared_bottom
    "num_experts": unset(int),                 # backbone=mmoe
    "num_levels": unset(int),                  # backbone=ple
    "shared_experts": unset(int),              # backbone=ple, per level
    "task_experts": unset(int),                # backbone=ple, per task and level
    "expert_units": unset(tuple),              # backbone=mmoe or ple
    **MULTITASK_TOWERS,
}
FAMILIES["esmm"] = ENTIRE_SPACE
FAMILIES["esm2"] = ENTIRE_SPACE


def options(family: str) -> dict:
    """The options of ``family``, the common ones first; an unknown family lists the declared ones."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model {family!r} in config.model.name; the model families: {sorted(FAMILIES)}")
    return {**COMMON, **FAMILIES[family]}


def _field(default):
    if isinstance(default, NoDefault):
        return placeholder(default.type)
    if isinstance(default, dict):
        return ml_collections.ConfigDict({key: _field(value) for key, value in default.items()})
    return default


def model_block(family: str) -> ml_collections.ConfigDict:
    """``config.model`` for ``family``: ``name`` and every option at its default (one without a default is an
    unset field of its type), so that a command-line override can set any of them."""
    block = ml_collections.ConfigDict({key: _field(value) for key, value in options(family).items()})
    block.name = family
    return block


def _unknown_key_error(where: str, key: str, known, family: str) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    return ValueError(f"{where}.{key}: {family} has no option {key!r}; {suggestion}its options are listed in "
                      f"{OPTIONS_DOC}")


def _resolve_block(block, declared: dict, where: str, family: str) -> dict:
    values = dict(block.items()) if block is not None else {}
    for key in values:
        if key not in declared:
            raise _unknown_key_error(where, key, declared, family)
    resolved = {}
    for key, default in declared.items():
        value = values.get(key)
        if isinstance(default, dict):
            value = _as_dict(value)
            resolved[key] = _resolve_block(value, default, f"{where}.{key}", family) if default else value
        elif value is not None:
            resolved[key] = value
        elif isinstance(default, NoDefault):
            if default.required:
                raise ValueError(f"{where}.{key}: {family} needs this option, which has no default "
                                 f"({OPTIONS_DOC})")
            resolved[key] = None
        else:
            resolved[key] = default
    return resolved


def _as_dict(block) -> dict:
    if block is None:
        return {}
    return block.to_dict() if hasattr(block, "to_dict") else dict(block)


def resolve(model) -> ml_collections.ConfigDict:
    """``config.model`` checked against its family's declaration, with every option the block leaves out (or
    unset) at its default: an unknown key (top level, or in a nested block with declared options) is a
    ``ValueError`` naming it, the family and the closest known option; so is a required option left unset."""
    name = model.get("name") if model is not None else None
    if not name:
        raise ValueError(f"config.model.name is not set; the model families: {sorted(FAMILIES)}")
    return ml_collections.ConfigDict(_resolve_block(_as_dict(model), options(name), "config.model", name))


def _declaration_comments() -> dict:
    """``{(block, option): comment}`` from this file's declarations: a block is a family of ``FAMILIES`` or
    a module-level dict (``COMMON``, ``MULTITASK_TOWERS``, ...)."""
    comments, block = {}, None
    with open(__file__, encoding="utf-8") as source:
        for line in source:
            top = re.match(r"^([A-Z_]+) = \{", line)
            family = re.match(r'^    "(\w+)": \{', line)
            option = re.match(r'^\s+"(\w+)": .*?#\s*(.+)$', line)
            if top:
                block = top.group(1)
            elif family and block == "FAMILIES":
                block = ("FAMILIES", family.group(1))
            elif option and block:
                comments[(block[1] if isinstance(block, tuple) else block, option.group(1))] = option.group(2)
            if line.startswith("    },") and isinstance(block, tuple):
                block = "FAMILIES"
    return comments


def markdown_table() -> str:
    """The table of docs/model-options.md: each family's options, defaults and the declaration's comment, a
    nested block's keys on rows of their own (a test keeps the page current)."""
    comments = _declaration_comments()
    blocks = {name: value for name, value in globals().items() if name.isupper() and isinstance(value, dict)}
    # A family's option without a comment of its own takes the one of a shared block it spreads in.
    shared = ("ENTIRE_SPACE", "MULTITASK_TOWERS")
    rows = ["| family | option | default | note |", "|---|---|---|---|"]

    def describe(default) -> str:
        if isinstance(default, NoDefault):
            return f"{'required' if default.required else 'unset'} ({default.type.__name__})"
        if isinstance(default, dict):
            return "a block (the rows below)" if default else "`{}` (free-form)"
        return f"`{default!r}`"

    def note(sources, key) -> str:
        text = next((comments[(source, key)] for source in sources if (source, key) in comments), "")
        return text.replace("|", "&#124;")

    for family, declared in [("every family", COMMON), *sorted(FAMILIES.items())]:
        sources = ("COMMON",) if family == "every family" else (
            family, *[name for name in shared if blocks[name].items() <= declared.items()])
        for key, default in declared.items():
            rows.append(f"| {family} | `{key}` | {describe(default)} | {note(sources, key)} |")
            if isinstance(default, dict):
                nested = [name for name, block in blocks.items() if block is default]
                for inner, value in default.items():
                    rows.append(f"| {family} | `{key}.{inner}` | {describe(value)} | {note(nested, inner)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
