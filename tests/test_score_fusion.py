"""Score fusion at export: the served ``fused`` output is the configured formula of the task outputs, in
every signature, and re-tuning it changes the ranking of a new export of the same weights."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.serving_dnn import REPO, synthetic_examples
from tfrecsys.config import load_config
from tfrecsys.contract import METADATA_FILE, SERVING_DEFAULT, SERVING_EXAMPLES
from tfrecsys.export.fusion import ScoreFusion, fusion_from_config
from tfrecsys.export.saved_model import export_saved_model
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model

ESMM_CONFIG = os.path.join(REPO, "configs", "esmm.py:simulator")


def test_formulas_parse_into_products_of_powers_and_weighted_sums():
    assert ScoreFusion.parse("ctr^0.8 * cvr^1.2").terms == (("ctr", 0.8), ("cvr", 1.2))
    assert ScoreFusion.parse("ctcvr").kind == "product"
    fusion = ScoreFusion.parse("0.7*ctr + ctcvr + -2e+1*cvr")
    assert (fusion.kind, fusion.terms) == ("sum", (("ctr", 0.7), ("ctcvr", 1.0), ("cvr", -20.0)))
    outputs = {"ctr": tf.constant([0.5, 0.2]), "cvr": tf.constant([0.1, 0.4]), "ctcvr": tf.constant([0.05, 0.08])}
    np.testing.assert_allclose(ScoreFusion.parse("ctr^2 * cvr^0.5")(outputs), [0.25 * 0.1 ** 0.5, 0.04 * 0.4 ** 0.5],
                               rtol=1e-6)
    np.testing.assert_allclose(fusion(outputs), [0.35 + 0.05 - 2.0, 0.14 + 0.08 - 8.0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"config.export.fusion 'ctr \*\* 2': cannot read ''"):
        ScoreFusion.parse("ctr ** 2")
    with pytest.raises(ValueError, match=r"reads \['click'\], which the model does not serve; its outputs are "
                                         r"\['ctr', 'cvr'\]"):
        ScoreFusion.parse("click^2").check_outputs(["ctr", "cvr"])
    assert fusion_from_config(load_config(ESMM_CONFIG)) is None


def test_the_exported_fused_output_is_the_formula_and_retuning_it_reranks(tmp_path):
    config = load_config(ESMM_CONFIG, {"model.tower_units": (4,), "export.fusion": "ctr^3 * cvr"})
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, schema)
    rows = synthetic_examples(schema, 64, seed=5)
    model(schema.parse_examples(tf.constant(rows[:2]), with_labels=False, serving=True), training=False)
    path = export_saved_model(model, schema, str(tmp_path), "esmm", fusion=fusion_from_config(config))

    loaded = tf.saved_model.load(path)
    by_features = loaded.signatures[SERVING_DEFAULT](**schema.parse_examples(tf.constant(rows), with_labels=False,
                                                                             serving=True))
    by_examples = loaded.signatures[SERVING_EXAMPLES](inputs=tf.constant(rows))
    assert sorted(by_features) == ["ctcvr", "ctr", "cvr", "fused"]
    assert "classify_fused" in loaded.signatures and "regress_fused" in loaded.signatures
    ctr, cvr, fused = (by_features[name].numpy() for name in ("ctr", "cvr", "fused"))
    np.testing.assert_allclose(fused, ctr ** 3 * cvr, rtol=1e-5)
    np.testing.assert_allclose(by_examples["fused"], fused, rtol=1e-6)
    with open(os.path.join(path, METADATA_FILE)) as f:
        assert json.load(f)["fusion"] == "ctr^3 * cvr"
    # Re-tuned weights, same model outputs: another order, so another export ranks differently.
    retuned = ScoreFusion.parse("ctr * cvr^3")({"ctr": ctr, "cvr": cvr}).numpy()
    assert not np.array_equal(np.argsort(fused), np.argsort(retuned))
