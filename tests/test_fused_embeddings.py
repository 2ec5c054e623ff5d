"""Tables packed by width (``model.fused_embeddings``, ``EmbeddingTables.pack_by_width``): the same model as
one variable per table, with fewer variables.

Each test copies one layout's table values into the other (``TableSlice.assign``) and the other weights in
order, then compares: the outputs and every variable's gradient per table row (the census families, and a
hand-made schema with shared and own-vocabulary sequences, padding, OOV ids of every kind of lookup), DIN's
mini-batch aware L2 (a user of one table's rows), the whole-table L2, the initialisers, two Adam steps; then
what only the packed layout has: one variable per width, a SavedModel whose serving signature scores as the
model does, a checkpoint round trip, and a clear error when a checkpoint of the other layout is restored.
"""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tests.serving_dnn import REPO, synthetic_examples
from tfrecsys import contract
from tfrecsys.config import load_config
from tfrecsys.export.trained import export_model
from tfrecsys.features.embedding import EmbeddingTables
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.train.adam import Adam
from tfrecsys.train.strategy import precision_policy

CONFIGS = os.path.join(REPO, "configs")
CENSUS_FAMILIES = ("shared_bottom", "mmoe", "ple", "esmm")
# Small networks: the families' own size keys.
SMALL = {"shared_bottom": {"model.tower_units": (4,), "model.bottom_units": (8,)},
         "mmoe": {"model.tower_units": (4,), "model.expert_units": (8,)},
         "ple": {"model.tower_units": (4,), "model.expert_units": (8,)},
         "esmm": {"model.tower_units": (8, 4)}}
ROWS = 32

# Ids of every kind of lookup, two widths, a sequence that shares a table and one with its own vocabulary, a
# raw sequence and a dense value between them (the output keeps the schema's order).
MIXED = FeatureSchema.from_config({
    "user_id": dict(kind="id", num_buckets=7, num_oov=2, embedding_dim=4),
    "city": dict(kind="id", dtype="string", vocabulary=("paris", "lyon", "nice"), embedding_dim=4),
    "price": dict(kind="id", dtype="float32", boundaries=(0.2, 0.5, 0.8), embedding_dim=2),
    "age": dict(kind="dense"),
    "item_id": dict(kind="id", hash_buckets=11, embedding_dim=4),
    "hist_item_id": dict(kind="sequence", shares="item_id", max_len=3),
    "hist_tag": dict(kind="sequence", num_buckets=5, max_len=2, embedding_dim=2),
    "hist_time": dict(kind="sequence", raw=True, max_len=3, aligned_with="hist_item_id"),
    "click": dict(kind="label"),
})


def mixed_batch():
    """Rows that reach every OOV row and padding: ids out of range (negative too), unknown strings, a price on
    a cut point, empty and full histories."""
    return {
        "user_id": tf.constant([0, 6, 7, -3, 100, 2], tf.int64),
        "city": tf.constant(["paris", "nice", "tokyo", "", "lyon", "rome"]),
        "price": tf.constant([0.0, 0.2, 0.5, 0.99, -1.0, 7.0], tf.float32),
        "age": tf.constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        "item_id": tf.constant([3, 3, 12345, -7, 0, 99], tf.int64),
        "hist_item_id": tf.constant([[3, 4, 0], [0, 0, 0], [5, 5, 5], [-1, 8, 0], [1, 0, 0], [7, 7, 2]], tf.int64),
        "hist_item_id_length": tf.constant([2, 0, 3, 2, 1, 3], tf.int64),
        "hist_tag": tf.constant([[1, 9], [0, 0], [4, -2], [3, 3], [0, 0], [2, 1]], tf.int64),
        "hist_tag_length": tf.constant([2, 0, 2, 1, 0, 2], tf.int64),
        "hist_time": tf.constant([[10, 20, 0]] * 6, tf.int64),
    }


def copy_tables(source: EmbeddingTables, target: EmbeddingTables) -> None:
    for name in source.table_names:
        target.table_slice(name).assign(source.table_slice(name).values())


def table_gradients(tables: EmbeddingTables, gradients: dict) -> dict:
    """``{table: dense [rows, dim] gradient}`` from ``{variable ref: gradient}`` (dense or IndexedSlices)."""
    out = {}
    for name in tables.table_names:
        where = tables.table_slice(name)
        out[name] = tf.convert_to_tensor(gradients[where.variable.ref()])[where.offset:where.offset + where.rows]
    return out


def assert_same_outputs(unfused: dict, fused: dict) -> None:
    assert list(unfused) == list(fused)  # the same names, in the same order
    for name in unfused:
        np.testing.assert_allclose(fused[name].numpy(), unfused[name].numpy(), atol=1e-6, err_msg=name)


def test_a_view_gives_the_same_rows_order_and_gradients_per_table_row_packed():
    tf.keras.utils.set_random_seed(0)
    unfused, fused = EmbeddingTables(MIXED), EmbeddingTables(MIXED, fused=True)
    features = mixed_batch()
    every = [f.name for f in MIXED.inputs]
    unfused.view(every)(features)
    fused.view(every)(features)
    copy_tables(unfused, fused)
    rng = np.random.default_rng(0)
    embedded = [f.name for f in MIXED.inputs if f.embedded]
    weights = {name: tf.constant(rng.normal(size=value.shape), tf.float32)
               for name, value in unfused.view(embedded)(features).items() if not name.endswith("_mask")}
    results = []
    for tables in (unfused, fused):
        with tf.GradientTape() as tape:
            out = tables.view(every)(features)
            loss = sum(tf.reduce_sum(out[name] * weight) for name, weight in weights.items())
        variables = tables.trainable_variables
        gradients = dict(zip([v.ref() for v in variables], tape.gradient(loss, variables)))
        results.append((out, table_gradients(tables, gradients)))
    (out_a, grads_a), (out_b, grads_b) = results
    assert_same_outputs(out_a, out_b)
    np.testing.assert_array_equal(out_b["hist_time"].numpy(), features["hist_time"].numpy())
    for name in grads_a:
        np.testing.assert_allclose(grads_b[name].numpy(), grads_a[name].numpy(), atol=1e-6, err_msg=name)
    # The OOV rows were read: the gradient reached user_id's two OOV rows, city's, and price's last bucket.
    assert np.all(np.abs(grads_b["user_id"].numpy()[7:]).sum(-1) > 0)
    assert np.abs(grads_b["city"].numpy()[0]).sum() > 0
    assert np.abs(grads_b["price"].numpy()[3]).sum() > 0
    # Padding reads rows (masked later, by the model) as one variable per table does: the same gradient.
    assert len(fused.trainable_variables) == 2 and len(unfused.trainable_variables) == 5


def test_embed_rows_and_variable_rows_point_into_the_packed_variable():
    tf.keras.utils.set_random_seed(0)
    fused = EmbeddingTables(MIXED, fused=True)
    fused.view([f.name for f in MIXED.inputs])(mixed_batch())
    ids = tf.constant([0, 6, 7, -3], tf.int64)
    variable, rows = fused.variable_rows("hist_tag", tf.constant([0, 4, 5], tf.int64))
    where = fused.table_slice("hist_tag")
    assert variable is where.variable and where.offset > 0
    np.testing.assert_array_equal(rows.numpy(), where.offset + np.array([0, 4, 5]))
    expected = tf.gather(fused.table_slice("user_id").values(), fused.rows("user_id", ids))
    np.testing.assert_array_equal(fused.embed("user_id", ids).numpy(), expected.numpy())
    with pytest.raises(ValueError, match=r"table 'user_id' is rows of the packed variable .*table_slice"):
        fused.table("user_id")
    used = EmbeddingTables(MIXED)
    used.embed("user_id", ids)
    with pytest.raises(ValueError, match="packed by width before they are used"):
        used.pack_by_width()


def test_under_a_mixed_policy_the_packed_rows_are_cast_and_the_variable_stays_float32():
    with precision_policy("mixed_bfloat16"):
        tables = EmbeddingTables(MIXED, fused=True)
    view = tables.view(["user_id", "hist_item_id"])
    out = view(mixed_batch())  # the first use, after the policy's block: the tables keep the owner's policy
    assert out["user_id"].dtype == tf.bfloat16 and out["hist_item_id"].dtype == tf.bfloat16
    assert {v.dtype for v in tables.weights} == {tf.float32}
    rows = tf.gather(tables.table_slice("user_id").values(), tables.rows("user_id", mixed_batch()["user_id"]))
    np.testing.assert_array_equal(out["user_id"].numpy(), tf.cast(rows, tf.bfloat16).numpy())


def census_config(family: str, data_dir: str, fused: bool, **model_options):
    """``configs/<family>.py:census`` with small networks, the layout, and ``model_options`` set."""
    config = load_config(os.path.join(CONFIGS, f"{family}.py:census"),
                         {"data.dir": data_dir, "model.fused_embeddings": fused, **SMALL[family]})
    config.model.update(model_options)
    return config


@pytest.fixture(scope="module")
def census_dir(tmp_path_factory):
    """The census configs' vocabulary and bucket files, made up (tables of different sizes, so offsets
    differ from table to table; synthetic ids ``v0``…``v49`` reach the OOV row of every small one)."""
    config = load_config(os.path.join(CONFIGS, "mmoe.py:census"), {"data.dir": "unused"})
    root = tmp_path_factory.mktemp("census")
    os.makedirs(root / "vocabularies")
    for i, (name, spec) in enumerate(sorted(config.features.items())):
        if spec.get("vocabulary"):
            (root / "vocabularies" / f"{name}.txt").write_text("".join(f"v{k}\n" for k in range(3 + 2 * i)))
        elif spec.get("boundaries"):
            (root / "vocabularies" / f"{name}.txt").write_text("0.25\n0.5\n0.75\n")
    return str(root)


def census_pair(family: str, data_dir: str, **model_options):
    """(unfused, fused, features, labels): the same untrained census model in both layouts, fused given the
    unfused one's weights."""
    models = []
    for fused in (False, True):
        config = census_config(family, data_dir, fused, **model_options)
        schema = FeatureSchema.from_config(config.features)
        tf.keras.utils.set_random_seed(0)
        models.append(build_model(config, schema))
    features, labels = schema.split_labels(schema.parse_examples(tf.constant(synthetic_examples(schema, ROWS, 3))))
    unfused, fused = models
    for model in models:
        model(features, training=False)
    copy_tables(unfused.embeddings, fused.embeddings)
    table_variables = [{v.ref() for v in m.embeddings.weights} for m in models]
    others = [[v for v in m.weights if v.ref() not in tables] for m, tables in zip(models, table_variables)]
    assert [v.shape for v in others[0]] == [v.shape for v in others[1]]
    for source, target in zip(*others):
        target.assign(source)
    return unfused, fused, features, labels


@pytest.mark.parametrize("family", CENSUS_FAMILIES)
def test_census_families_score_and_differentiate_alike_in_both_layouts(census_dir, family):
    unfused, fused, features, _ = census_pair(family, census_dir)
    assert len(fused.embeddings.trainable_variables) == 2  # 16-d nominal columns, 8-d money buckets
    assert len(unfused.embeddings.trainable_variables) == 36
    assert len(unfused.trainable_variables) - len(fused.trainable_variables) == 34
    results = []
    for model in (unfused, fused):
        with tf.GradientTape() as tape:
            outputs = model(features, training=True)
            loss = sum(tf.reduce_sum(outputs[name] * (1.0 + i)) for i, name in enumerate(sorted(outputs)))
        variables = model.trainable_variables
        gradients = dict(zip([v.ref() for v in variables], tape.gradient(loss, variables)))
        table_refs = {v.ref() for v in model.embeddings.weights}
        results.append((outputs, table_gradients(model.embeddings, gradients),
                        [gradients[v.ref()] for v in variables if v.ref() not in table_refs]))
    (out_a, tables_a, others_a), (out_b, tables_b, others_b) = results
    assert_same_outputs(out_a, out_b)
    assert sorted(tables_a) == sorted(tables_b)
    for name in tables_a:
        np.testing.assert_allclose(tables_b[name].numpy(), tables_a[name].numpy(), atol=1e-6, err_msg=name)
    for a, b in zip(others_a, others_b, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6)


def test_two_adam_steps_move_every_table_row_alike(census_dir):
    unfused, fused, features, labels = census_pair("mmoe", census_dir)
    for model in (unfused, fused):
        optimizer = Adam(0.01)
        for _ in range(2):
            with tf.GradientTape() as tape:
                outputs = model(features, training=True)
                loss = tf.reduce_sum(outputs["income"]) - tf.reduce_sum(outputs["never_married"])
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    for name in unfused.embeddings.table_names:
        np.testing.assert_allclose(fused.embeddings.table_slice(name).values().numpy(),
                                   unfused.embeddings.table_slice(name).values().numpy(), atol=1e-6, err_msg=name)
    assert_same_outputs(unfused(features), fused(features))


def test_whole_table_l2_is_the_sum_over_the_packed_tables(census_dir):
    unfused, fused, features, _ = census_pair("shared_bottom", census_dir, embedding_l2=0.25)
    penalties = [sum(float(loss) for loss in model.losses) for model in (unfused, fused)]
    expected = 0.25 * sum(float(tf.reduce_sum(tf.square(unfused.embeddings.table_slice(name).values())))
                          for name in unfused.embeddings.table_names)
    np.testing.assert_allclose(penalties, [expected, expected], rtol=1e-5)
    assert len(fused.losses) == 2  # one penalty per packed variable


def test_each_table_starts_from_its_own_initialiser_draw(census_dir):
    config = census_config("mmoe", census_dir, True, embedding_init_stddev=1e-4)
    schema = FeatureSchema.from_config(config.features)
    model = build_model(config, schema)
    model.embeddings.initialize_normal(1e-4, seed=2020)  # DeepCTR's: every table seeded alike
    model.embeddings(schema.parse_examples(tf.constant(synthetic_examples(schema, 4)), with_labels=False))
    first, second = (model.embeddings.table_slice(name).values().numpy() for name in ("education", "sex"))
    rows = min(len(first), len(second))
    np.testing.assert_array_equal(first[:rows], second[:rows])  # the same seed, each table's own shape
    assert 0.7e-4 < first.std() < 1.3e-4
    with pytest.raises(ValueError, match="before the tables are built.*education"):
        model.embeddings.regularize(1e-6)
    default = EmbeddingTables(MIXED, fused=True)
    default.view([f.name for f in MIXED.inputs])(mixed_batch())
    values = np.concatenate([v.numpy().ravel() for v in default.weights])
    assert np.abs(values).max() <= 2 * 0.05 and 0.03 < values.std() < 0.06  # truncated N(0, 0.05²)


DIN_FEATURES = {
    "user_id": dict(kind="id", num_buckets=10, embedding_dim=4),
    "item_id": dict(kind="id", num_buckets=30, embedding_dim=4),
    "item_category": dict(kind="id", num_buckets=5, embedding_dim=2),
    "hist_item_id": dict(kind="sequence", shares="item_id", max_len=4),
    "hist_category": dict(kind="sequence", shares="item_category", max_len=4, aligned_with="hist_item_id"),
    "click": dict(kind="label"),
}


def test_din_mini_batch_aware_l2_penalises_the_same_rows_packed():
    schema = FeatureSchema.from_config(DIN_FEATURES)
    features, _ = schema.split_labels(schema.parse_examples(tf.constant(synthetic_examples(schema, 16, seed=5))))
    models = []
    for fused in (False, True):
        config = ml_collections.ConfigDict(dict(
            model=dict(name="din", history=("hist_item_id", "hist_category"), attention_units=(8,),
                       hidden_units=(8,), mba_l2=0.5, fused_embeddings=fused),
            tasks=dict(score=dict(label="click"))))
        tf.keras.utils.set_random_seed(0)
        models.append(build_model(config, schema))
        models[-1](features, training=False)
    unfused, fused = models
    copy_tables(unfused.embeddings, fused.embeddings)
    for source, target in zip(*[[v for v in m.weights if v.ref() not in {t.ref() for t in m.embeddings.weights}]
                                for m in models]):
        target.assign(source)
    penalties = []
    for model in models:
        model(features, training=True)
        (penalty,) = model.losses
        penalties.append(float(penalty))
    assert_same_outputs(unfused(features), fused(features))
    np.testing.assert_allclose(penalties[1], penalties[0], rtol=1e-6)
    assert penalties[0] > 0


def test_a_packed_model_exports_and_its_serving_signature_scores_as_the_model(census_dir, tmp_path):
    _, fused, _, _ = census_pair("mmoe", census_dir)
    schema = fused.schema
    served = schema.parse_examples(tf.constant(synthetic_examples(schema, 8, seed=9)), with_labels=False,
                                   serving=True)
    path = export_model(fused, str(tmp_path), "mmoe_fused")
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures[contract.SERVING_DEFAULT]
    packed = sorted(v.name for v in signature.variables if "packed_" in v.name)
    per_table = [v.name for v in signature.variables if v.name.endswith("_embedding/embeddings:0")]
    assert len(packed) == 2 and not per_table
    # A money column is sent once; its bucket is read from it inside the SavedModel.
    outputs = signature(**{name: served[name] for name in signature.structured_input_signature[1]})
    expected = fused(served, training=False)
    for name in ("income", "never_married"):
        np.testing.assert_allclose(outputs[name].numpy(), expected[name].numpy(), atol=1e-6, err_msg=name)


def test_a_packed_checkpoint_restores_and_the_other_layout_is_refused_by_name(census_dir, tmp_path):
    unfused, fused, features, _ = census_pair("shared_bottom", census_dir)
    fused_path = tf.train.Checkpoint(model=fused).save(str(tmp_path / "fused" / "ckpt"))
    unfused_path = tf.train.Checkpoint(model=unfused).save(str(tmp_path / "unfused" / "ckpt"))
    config = census_config("shared_bottom", census_dir, True)
    tf.keras.utils.set_random_seed(1)  # other initial weights
    again = build_model(config, fused.schema)
    again(features, training=False)
    assert not np.allclose(again(features)["income"].numpy(), fused(features)["income"].numpy())
    tf.train.Checkpoint(model=again).restore(fused_path).assert_consumed()
    assert_same_outputs(fused(features), again(features))
    with pytest.raises(ValueError, match=r"one variable per table \(model.fused_embeddings=False\).*"
                                         r"one variable per width \(model.fused_embeddings=True\)"):
        tf.train.Checkpoint(model=again).restore(unfused_path)
    with pytest.raises(ValueError, match=r"one variable per width \(model.fused_embeddings=True\).*"
                                         r"one variable per table \(model.fused_embeddings=False\)"):
        tf.train.Checkpoint(model=unfused).restore(fused_path)
