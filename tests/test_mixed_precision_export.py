"""A ranking family trained under ``mixed_bfloat16`` exports as float32, the way ``tfrecsys-export`` does it:
the float32 variables checkpointed, restored into the model rebuilt under the float32 policy, served with
float32 outputs that match the 16-bit model's in-process scores."""

import numpy as np
import pytest
import tensorflow as tf

from tests.serving_dnn import synthetic_examples
from tests.test_export_contract import FAMILY_CASES
from tfrecsys.config import load_config
from tfrecsys.export.saved_model import export_saved_model
from tfrecsys.export.trained import restore_weights
from tfrecsys.features.schema import FeatureSchema
from tfrecsys.models import build_model
from tfrecsys.train.strategy import precision_policy

# din: Dice keeps float32 moving moments; esmm (on MMoE): experts, gates and the float32 heads.
FAMILIES = ["din", "esmm"]


@pytest.mark.slow  # 65-80 s per family at load 15-20 on the 2 cores (the export most of it)
@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_bfloat16_model_serves_float32_scores_close_to_its_own(tmp_path, family):
    case = FAMILY_CASES[family]
    config = load_config(case.config, case.overrides)
    schema = FeatureSchema.from_config(config.features)
    rows = schema.parse_examples(tf.constant(synthetic_examples(schema, 32, seed=1)))
    labels = {f.name: rows.pop(f.name) for f in schema.labels}
    serving = {name: value for name, value in rows.items() if name in {f.name for f in schema.serving_inputs}
               or name.removesuffix("_length") in {f.name for f in schema.serving_inputs}}

    tf.keras.utils.set_random_seed(0)
    with precision_policy("mixed_bfloat16"):
        trained = build_model(config, schema)
        trained.compile(optimizer=tf.keras.optimizers.Adam(0.05))
        for _ in range(2):  # moves the weights and Dice's moving moments away from their initial values
            trained.train_step((rows, labels))
    assert trained.compute_dtype == "bfloat16" and {v.dtype for v in trained.variables} == {tf.float32}
    in_process = trained(serving, training=False)
    path = tf.train.Checkpoint(model=trained).write(str(tmp_path / "ckpt"))

    with precision_policy("none"):
        restored = build_model(config, schema)
        restored(serving, training=False)
        restore_weights(restored, schema, config, path)
    loaded = tf.saved_model.load(export_saved_model(restored, schema, str(tmp_path / "export"), family))
    served = loaded.signatures["serving_default"](**serving)
    for name, value in in_process.items():
        assert served[name].dtype == tf.float32
        # bfloat16 keeps 8 bits of mantissa: the float32 export differs from the 16-bit forward by rounding only.
        np.testing.assert_allclose(served[name].numpy(), tf.cast(value, tf.float32).numpy(), atol=2e-2)
