"""The blocks every experiment config repeats: data, train and export, with the house defaults.

An experiment file starts from ``get_config`` and sets what is its own (features, model, tasks, and any
default it changes); ``family`` is the model family (``config.model.name``), whose every option
``config.model`` then holds at its default (``tfrecsys/model_options.py``, docs/model-options.md), so that
the command line can set one the file leaves out:

    from tfrecsys.config import config_beside
    base = config_beside(__file__, "base.py")

    def get_config():
        config = base.get_config("dnn_simulator", data_dir="runs/data/click_log", model_name="dnn",
                                 family="dnn")
        config.train.steps = 400
        ...

Every field here can be overridden from the command line like any other (``--config.train.batch_size=256``).
"""

import ml_collections

from tfrecsys.model_options import model_block


def get_config(experiment: str, *, data_dir: str, model_name: str, family: str) -> ml_collections.ConfigDict:
    """The shared blocks; ``model_name`` is the export's name (``<export_base>/<model_name>/<version>``),
    ``family`` the model's."""
    config = ml_collections.ConfigDict()
    config.experiment = experiment

    config.data = ml_collections.ConfigDict()
    # Where preprocessing or the simulator writes and training reads; a relative path is taken from the
    # working directory. A FieldReference, so paths built from it (vocabularies) follow an override.
    config.data.dir = ml_collections.FieldReference(data_dir)
    config.data.train_files = "train-*.tfrecord"
    config.data.eval_files = "eval-*.tfrecord"

    config.features = ml_collections.ConfigDict()
    config.model = model_block(family)
    # Output name -> label, loss, weight, mask, sample_weight, metrics (tfrecsys/models/tasks.py).
    config.tasks = ml_collections.ConfigDict()

    config.train = ml_collections.ConfigDict()
    config.train.mode = "batch"              # batch (shuffled, steps) | streaming (time windows in order)
    config.train.batch_size = 512            # global batch: split across replicas under a strategy
    config.train.steps = 1000
    config.train.steps_per_loop = 100        # steps between checkpoints / progress summaries
    config.train.steps_per_execution = 20    # steps per tf.function call: fewer Python round trips on CPU
    config.train.learning_rate = 0.003
    config.train.optimizer = "adam"          # adam | adam_keras | adagrad | sgd (tfrecsys/train/adam.py)
    # m > 0: evaluate, keep as best and export the moving average of the weights (a ← m·a + (1−m)·w after every
    # step, from the initial weights: keep m ≤ 1 − 10/steps); 0: the last weights. Batch mode only.
    config.train.ema_momentum = 0.0
    config.train.shuffle_buffer = 20_000     # rows permuted together (about one window of each read file)
    config.train.eval_batch_size = 2048
    config.train.eval_steps = 0              # 0: the whole eval split
    config.train.seed = 42
    config.train.max_checkpoints = 3
    config.train.eval_every_loop = 1         # evaluate after every N-th loop (TensorBoard val curves); 0: only at the end
    config.train.best_metric = "auc"         # keep <model_dir>/best/ by this eval metric ("": no best checkpoint)
    config.train.early_stopping_patience = 0  # stop after N evaluations without a better best_metric; 0: never
    # Online-learning options of streaming mode (tfrecsys/train/online.py).
    config.train.online = ml_collections.ConfigDict()
    config.train.online.freeze = "none"              # none | all_but_embeddings: only embedding tables train
    config.train.online.replay_windows = 0           # R > 0: window t trains mixed with window t-R's rows
    config.train.online.distillation_weight = 0.0    # λ > 0: loss BCE(y, s) + λ·CE(teacher, s); practice: 0.2
    config.train.online.teacher_saved_model = ""     # teacher export (base or version dir); "": teacher_column
    config.train.online.teacher_column = "teacher_{output}"  # precomputed teacher probability per output
    # How the step combines task losses: fixed | uncertainty | dwa | gradnorm | pcgrad (tfrecsys/losses/weighting.py).
    config.train.loss_weighting = ml_collections.ConfigDict(dict(kind="fixed"))

    config.export = ml_collections.ConfigDict()
    config.export.model_name = model_name
    config.export.warmup_requests = 8        # eval rows replayed as TF Serving warmup requests
    # A served "fused" output: "ctr^0.8 * cvr^1.2" or "0.7*ctr + 0.3*ctcvr" over the outputs ("": none).
    config.export.fusion = ""
    # Calibration of binary outputs, served inside the SavedModel (tfrecsys/calibration.py).
    config.export.calibration = ml_collections.ConfigDict()
    config.export.calibration.method = "none"              # none | platt | isotonic: fitted on the eval split
    config.export.calibration.negative_sampling_rate = 1.0  # w, share of negatives training kept: p/(p+(1-p)/w)
    config.export.calibration.max_rows = 100_000           # eval rows the maps are fitted on
    config.export.calibration.label = ""                   # label the maps fit ("": each task's own)
    return config
