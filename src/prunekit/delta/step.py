"""The delta step of a recipe (``kind: delta``)::

    steps:
      - kind: delta
        method: darex-q        # dare | darex-q | magnitude | wanda | random (DELTA_METHODS)
        sparsity: 0.9          # DARE's drop rate p: the fraction of delta entries set to zero (alias: drop)
        options: {scope: layer}
        lora_prune: merged     # a LoRA adapter (--lora): prune the merged delta s*B@A, or factors A and B
    calibration: {source: brown:a, nsamples: 16, seqlen: 256}   # read by wanda and darex-q only
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunekit.core.errors import PrunekitError, short_repr
from prunekit.core.recipe import Step
from prunekit.core.registry import DELTA_METHODS, STEPS, option
from prunekit.core.targets import validate_selectors


def check_factor_method(step: DeltaStep) -> None:
    """``factors`` pruning runs the methods that read neither calibration statistics nor the model's loss."""
    if step.build().needs_calibration:
        raise PrunekitError(f"method {step.method!r} reads calibration data of the merged layers; pruning LoRA "
                            "factors runs methods that need none (dare, magnitude): use lora_prune merged "
                            "(--lora-prune merged) for it")


@STEPS.register("delta")
@dataclass
class DeltaStep(Step):
    """Prune the delta between a fine-tuned model and its base (DARE, DAREx-q, magnitude, Wanda-style)."""

    key_aliases = {"drop": "sparsity"}

    method: str = option("dare", "a registered delta method (see `prunekit list delta-methods`)")
    sparsity: float = option(0.9, "fraction of each target layer's delta entries set to zero (DARE's p)", min=0,
                             below=1)
    targets: list[str] = option(default_factory=lambda: ["Linear"], help="class names or 're:<regex>'")
    ignore: list[str] = option(default_factory=list, help="class names or 're:<regex>'; wins over targets")
    options: dict = option(default_factory=dict, help="method options, e.g. {scope: global} for darex-q")
    seed: int = option(0, "seed of the random drops (per layer: seed and layer name)", min=0)
    lora_prune: str = option("merged", "with a LoRA adapter: merged (prune the delta s*B@A of each layer) or factors "
                             "(prune the entries of A and B; methods without calibration only)",
                             choices=("merged", "factors"))

    def validate(self) -> None:
        self.method = DELTA_METHODS.canonical(self.method)
        self.options = DELTA_METHODS.check(self.method, self.options)
        if not self.targets or not all(self.targets):
            raise PrunekitError(f"targets is empty or has an empty name ({short_repr(self.targets)}), so no delta "
                                "would be pruned; give class names such as 'Linear' or 're:<regex>'")
        validate_selectors(self.targets, "targets")
        validate_selectors(self.ignore, "ignore")
        if self.lora_prune == "factors":
            check_factor_method(self)

    def build(self):
        """The method instance with its checked options."""
        return DELTA_METHODS.build(self.method, self.options)

    def run(self, session):
        """Prune the delta of the session's model (the fine-tuned one) against ``session.base``."""
        from prunekit.core.recipe import CalibrationConfig
        from prunekit.delta.prune import prune_delta

        if session.base is None:
            raise PrunekitError("a delta step needs the base model: prunekit.apply(finetuned, recipe, base=BASE)")
        base = session.base
        if isinstance(base, (str, Path)):
            from prunekit.models import load_model

            base = session.base = load_model(str(base))
        calib = session.calibration
        if self.build().needs_calibration:
            calib = CalibrationConfig(**{**calib.to_dict(), "source": session.windows()})
        return prune_delta(base, session.model, self, calib, session.tokenizer, session.progress)
