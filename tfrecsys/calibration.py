"""Post-training calibration of binary outputs, fitted on the eval split and served inside the SavedModel.

``config.export.calibration`` (configs/base.py) chooses it:

* ``negative_sampling_rate`` ``w``: a model trained on data that kept a share ``w`` of the negatives first
  gets ``q = p / (p + (1 − p)/w)`` (needs no data; 1.0 = no correction);
* ``method``: ``none``, ``platt`` (``sigmoid(a · logit(q) + b)``, maximum likelihood) or ``isotonic``
  (pool-adjacent-violators, served as a non-decreasing piecewise-linear map), fitted on up to ``max_rows``
  rows of the eval split (``config.data.eval_files``) with the task's label, mask and sample weight;
* ``label``: the label column the maps fit instead of each task's own: a model trained on labels observed
  early (conversions seen within an observation window) is calibrated to the final ones (``converted``).

Every output of a ``binary_crossentropy`` task is calibrated. ``tfrecsys-export`` (and ``tfrecsys-train
--export_base``) fits the maps on the checkpoint it exports and serves them (tfrecsys/layers/calibration.py):
same signatures, same output names, calibrated values; ``assets.extra/tfrecsys.json`` records the maps and
the expected calibration error before and after on the rows they were fitted on. The run report draws the
reliability diagram before and after (``tfrecsys.report.write_calibration``).

The eval split must hold the rates that serving meets (not down-sampled): Platt and isotonic fit them.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tfrecsys.data.input import make_dataset, resolve_files
from tfrecsys.layers.calibration import IsotonicCalibration, NegativeDownsamplingCorrection, PlattScaling
from tfrecsys.models.tasks import task_columns, tasks_from_config

METHODS = ("none", "platt", "isotonic")
ECE_BINS = 10
_NEWTON_STEPS = 100
_STEP_HALVINGS = 40


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
    method: str = "none"
    negative_sampling_rate: float = 1.0
    max_rows: int = 100_000
    label: str = ""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"config.export.calibration.method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 < self.negative_sampling_rate <= 1.0:
            raise ValueError("config.export.calibration.negative_sampling_rate (the share w of negatives "
                             f"training kept) must lie in (0, 1], got {self.negative_sampling_rate}")
        if self.max_rows <= 0:
            raise ValueError(f"config.export.calibration.max_rows must be positive, got {self.max_rows}")

    @property
    def enabled(self) -> bool:
        return self.method != "none" or self.negative_sampling_rate != 1.0

    @property
    def description(self) -> str:
        """What the maps are, for people: ``platt``, ``down-sampling correction (w=0.1) + isotonic``."""
        parts = [f"down-sampling correction (w={self.negative_sampling_rate:g})"] * (self.negative_sampling_rate != 1.0)
        return " + ".join(parts + [self.method] * (self.method != "none"))

    @classmethod
    def from_config(cls, config) -> "CalibrationSettings":
        block = config.get("export", {}).get("calibration")
        if not block:
            return cls()
        unknown = sorted(set(block) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"config.export.calibration: unknown keys {unknown}; it takes "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**dict(block))


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of ``values`` in their order: ``argmin_f Σ w_i (v_i −
    f_i)²`` subject to ``f_1 ≤ … ≤ f_n``, by pooling adjacent blocks that violate the order into their
    weighted mean (one pass with a stack of blocks, O(n))."""
    means, masses, sizes = [], [], []
    for value, weight in zip(np.asarray(values, np.float64), np.asarray(weights, np.float64)):
        means.append(value)
        masses.append(weight)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            mass = masses[-2] + masses[-1]
            mean = (means[-2] * masses[-2] + means[-1] * masses[-1]) / mass
            size = sizes[-2] + sizes[-1]
            del means[-1], masses[-1], sizes[-1]
            means[-1], masses[-1], sizes[-1] = mean, mass, size
    return np.repeat(means, sizes)


def fit_isotonic(probability: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                 name: str = None) -> IsotonicCalibration:
    """PAV of the labels ordered by ``probability`` (tied probabilities pooled first, so one probability
    gets one value); the layer's knots are each pooled block's smallest and largest probability."""
    order = np.argsort(probability, kind="stable")
    x, y, w = probability[order].astype(np.float64), labels[order].astype(np.float64), weights[order]
    unique, first = np.unique(x, return_index=True)
    mass = np.add.reduceat(w, first)
    rate = np.add.reduceat(w * y, first) / np.maximum(mass, 1e-300)
    fitted = pool_adjacent_violators(rate, mass)
    # A knot where the fitted value changes, plus both ends: flat inside a block, linear between blocks.
    change = np.flatnonzero(np.diff(fitted) != 0)
    keep = np.unique(np.concatenate([[0, len(unique) - 1], change, change + 1]))
    return IsotonicCalibration(unique[keep], fitted[keep], name=name)


def fit_platt(probability: np.ndarray, labels: np.ndarray, weights: np.ndarray, name: str = None) -> PlattScaling:
    """``(a, b)`` maximising ``Σ w [y log σ(a z + b) + (1 − y) log(1 − σ(a z + b))]``, ``z = logit(p)``, by
    Newton's method on the two parameters from the identity ``a = 1, b = 0``, each step halved until the
    likelihood improves (the objective is concave, but a full Newton step from a far start overshoots: scores
    of a model trained on early labels sit far below the rates they are fitted to)."""
    p = np.clip(probability.astype(np.float64), 1e-7, 1 - 1e-7)
    z = np.log(p) - np.log1p(-p)
    features = np.stack([z, np.ones_like(z)], axis=1)
    y, w = labels.astype(np.float64), weights.astype(np.float64)

    def negative_log_likelihood(theta):
        logit = features @ theta
        # log(1 + e^x) − y·x, stably for large |x|.
        return float(np.sum(w * (np.logaddexp(0.0, logit) - y * logit)))

    theta = np.array([1.0, 0.0])
    loss = negative_log_likelihood(theta)
    for _ in range(_NEWTON_STEPS):
        s = 1.0 / (1.0 + np.exp(-(features @ theta)))
        gradient = features.T @ (w * (y - s))
        hessian = (features * (w * s * (1 - s))[:, None]).T @ features + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        for _ in range(_STEP_HALVINGS):
            new_loss = negative_log_likelihood(theta + step)
            if new_loss <= loss:
                break
            step = step / 2
        else:
            break  # no step improves: at the optimum up to float precision
        theta, loss = theta + step, new_loss
        if np.max(np.abs(step)) < 1e-10:
            break
    return PlattScaling(slope=theta[0], intercept=theta[1], name=name)


def fit_calibration(settings: CalibrationSettings, probability: np.ndarray, labels: np.ndarray,
                    weights: np.ndarray = None, output: str = "score") -> list:
    """The layers that map ``output``'s probabilities to calibrated ones, applied in order (empty when the
    settings do nothing); fails naming the output when the rows cannot fit them (one class only)."""
    weights = np.ones_like(probability, np.float64) if weights is None else np.asarray(weights, np.float64)
    probability, labels = np.asarray(probability, np.float32), np.asarray(labels, np.float64)
    layers = []
    if settings.negative_sampling_rate != 1.0:
        layers.append(NegativeDownsamplingCorrection(settings.negative_sampling_rate,
                                                     name=f"{output}_downsampling_correction"))
        probability = layers[-1](probability).numpy()
    if settings.method == "none":
        return layers
    positive = float(np.sum(weights * labels))
    if positive <= 0 or positive >= float(np.sum(weights)):
        raise ValueError(f"cannot fit {settings.method} calibration of output {output!r}: its eval rows hold "
                         "only one class")
    fit = fit_platt if settings.method == "platt" else fit_isotonic
    return layers + [fit(probability, labels, weights, name=f"{output}_{settings.method}")]


def apply_calibration(layers, probability):
    """``probability`` through ``layers`` (``fit_calibration``'s) in order."""
    for layer in layers:
        probability = layer(probability)
    return probability


def expected_calibration_error(probability: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """``Σ_b (n_b / n) · |mean prediction_b − observed rate_b|`` over equal-width bins of the prediction."""
    probability, labels = np.asarray(probability, np.float64), np.asarray(labels, np.float64)
    index = np.clip((probability * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, probability, bins) - np.bincount(index, labels, bins))
    return float(gap.sum() / max(1, count.sum()))


def binary_tasks(config) -> list:
    """The tasks whose output is a probability with a 0/1 label (``binary_crossentropy``, the delayed-feedback
    CVR losses: ``Task.predicts_binary_label``)."""
    return [task for task in tasks_from_config(config.tasks) if task.predicts_binary_label]


def eval_predictions(config, model, schema, tasks, max_rows: int, label: str = "") -> dict:
    """``{output: (probability, label, weight)}`` numpy vectors over up to ``max_rows`` eval rows (in file
    order) for each task of ``tasks``, the label being the task's (or the column ``label``), the weight the
    task's mask times its sample weight; rows of weight 0 are left out."""
    if label and label not in {feature.name for feature in schema.features}:
        raise ValueError(f"config.export.calibration.label {label!r} is not a feature of the schema")
    files = resolve_files(config.data.eval_files, config.data.dir)
    dataset = make_dataset(files, schema, config.train.eval_batch_size, training=False)
    collected = {task.name: ([], [], []) for task in tasks}
    rows = 0
    for features, labels in dataset:
        outputs = model(features, training=False)
        count = int(tf.shape(tf.nest.flatten(features)[0])[0])
        for task in tasks:
            columns = task_columns(task, features, labels)
            target = (tf.cast(labels[label] if label in labels else features[label], tf.float32) if label
                      else task.label_values(columns))
            for part, value in zip(collected[task.name], (outputs[task.name], target,
                                                         task.row_weights(columns, count))):
                part.append(np.reshape(np.asarray(value), [-1])[:max_rows - rows])
        rows += count
        if rows >= max_rows:
            break
    out = {}
    for name, parts in collected.items():
        probability, observed, weight = (np.concatenate(part) for part in parts)
        kept = weight > 0
        out[name] = (probability[kept], observed[kept], weight[kept])
    return out


def fit_for_export(config, model, schema) -> tuple[dict, dict]:
    """``({output: [layers]}, summary)`` for ``config.export.calibration`` on ``model``: the maps of every
    binary output, fitted on the eval split, and what ``assets.extra/tfrecsys.json`` records of them
    (parameters; expected calibration error before and after, on the fitted rows). ``({}, {})`` when the
    settings do nothing."""
    settings = CalibrationSettings.from_config(config)
    if not settings.enabled:
        return {}, {}
    tasks = binary_tasks(config)
    if not tasks:
        raise ValueError(f"config.export.calibration.method is {settings.method!r}, but the config has no "
                         "binary task with a label (binary_crossentropy or a delayed-feedback CVR loss) to calibrate")
    predictions = eval_predictions(config, model, schema, tasks, settings.max_rows, settings.label)
    calibrators, summary = {}, {"method": settings.method, "negative_sampling_rate": settings.negative_sampling_rate,
                                "label": settings.label, "outputs": {}}
    for name, (probability, label, weight) in predictions.items():
        layers = fit_calibration(settings, probability, label, weight, output=name)
        calibrated = apply_calibration(layers, probability).numpy() if layers else probability
        calibrators[name] = layers
        summary["outputs"][name] = {
            "rows": int(len(probability)),
            "maps": [{"layer": type(layer).__name__, **layer.get_config()} for layer in layers],
            "expected_calibration_error_before": expected_calibration_error(probability, label),
            "expected_calibration_error_after": expected_calibration_error(calibrated, label)}
    return calibrators, summary
