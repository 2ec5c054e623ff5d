"""Score fusion at export: a served ``fused`` output, a configured formula of the model's task outputs, so
a ranking service gets its one ranking score from one call.

``config.export.fusion`` (empty: no fused output) is one of two forms over output names:

* a product of powers, ``Π_k p_k^{a_k}``: ``"ctr^0.8 * cvr^1.2"`` (a bare name has exponent 1, so ``"ctcvr"``
  serves ``ctcvr`` again as ``fused``);
* a weighted sum, ``Σ_k w_k p_k``: ``"0.7*ctr + 0.3*ctcvr"`` (a bare name has weight 1; weights may be
  negative, ``"ctr + -0.5*dislike"``).

The formula lives in the export, not in the trained model: re-tuning it (the A/B-tuned fusion weights go
stale as the model changes) is a new export of the same checkpoint, no retraining.
"""

import dataclasses
import re
from typing import Mapping, Sequence

import tensorflow as tf

FUSED_OUTPUT = "fused"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_POWER = re.compile(rf"^\s*(?P<name>[A-Za-z_]\w*)\s*(?:\^\s*(?P<exponent>{_NUMBER}))?\s*$")
# A "+" between terms, not the sign of an exponent (2e+1, ^+2).
_PLUS = re.compile(r"(?<!\d[eE])(?<!\^)\+")
_WEIGHTED = re.compile(rf"^\s*(?:(?P<weight>{_NUMBER})\s*\*\s*)?(?P<name>[A-Za-z_]\w*)\s*$")


@dataclasses.dataclass(frozen=True)
class ScoreFusion:
    """``kind`` ``"product"`` (``Π p_k^{a_k}``) or ``"sum"`` (``Σ w_k p_k``) over ``terms``, ``(output,
    exponent or weight)`` pairs; ``formula`` is the text it was parsed from."""
    formula: str
    kind: str
    terms: tuple

    @classmethod
    def parse(cls, formula: str) -> "ScoreFusion":
        summands = _PLUS.split(formula)
        kind = "sum" if len(summands) > 1 else "product"
        pattern, value = (_WEIGHTED, "weight") if kind == "sum" else (_POWER, "exponent")
        terms = []
        for text in summands if kind == "sum" else formula.split("*"):
            match = pattern.match(text)
            if not match:
                raise ValueError(
                    f"config.export.fusion {formula!r}: cannot read {text.strip()!r}; write a product of powers "
                    "'ctr^0.8 * cvr^1.2' or a weighted sum '0.7*ctr + 0.3*ctcvr' of output names")
            terms.append((match.group("name"), float(match.group(value) or 1.0)))
        names = [name for name, _ in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"config.export.fusion {formula!r} names an output twice")
        return cls(formula, kind, tuple(terms))

    @property
    def outputs(self) -> list[str]:
        return [name for name, _ in self.terms]

    def check_outputs(self, available: Sequence[str]) -> None:
        """Fails naming the formula when it reads an output the model does not serve, or would shadow one."""
        unknown = [name for name in self.outputs if name not in available]
        if unknown:
            raise ValueError(f"config.export.fusion {self.formula!r} reads {unknown}, which the model does not "
                             f"serve; its outputs are {sorted(available)}")
        if FUSED_OUTPUT in available:
            raise ValueError(f"the model serves an output named {FUSED_OUTPUT!r} already: export it without "
                             "config.export.fusion")

    def __call__(self, outputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """The fused score ``[batch]`` float32 from the model's ``[batch]`` outputs."""
        values = [(tf.cast(tf.reshape(outputs[name], [-1]), tf.float32), number) for name, number in self.terms]
        if self.kind == "sum":
            return tf.add_n([number * value for value, number in values])
        fused = tf.pow(values[0][0], values[0][1])
        for value, exponent in values[1:]:
            fused *= tf.pow(value, exponent)
        return fused


def fusion_from_config(config) -> "ScoreFusion | None":
    """The fusion of ``config.export.fusion``, or None when it is absent or empty."""
    formula = config.export.get("fusion", "") if "export" in config else ""
    return ScoreFusion.parse(formula) if formula else None
