"""The structured step of a recipe (``kind: structured``): the same structured prune from CLI flags,
Python or a YAML/JSON file::

    steps:
      - kind: structured
        method: flap
        structure: mlp,heads      # or a list; blocks alone takes remove: N (or sparsity)
        sparsity: 0.2             # fraction of the structures' parameters removed (alias: ratio)
        allocation: global        # uniform | global | blocks; default: the method's own
        round_to: 8
        widths: per-layer         # or uniform: every block the same widths, a plain transformers folder
    calibration: {source: "brown:b-r", nsamples: 64, seqlen: 512, seed: 0}
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.core.errors import PrunekitError
from prunekit.core.recipe import CalibrationConfig, Step
from prunekit.core.registry import CRITERIA, STEPS, option
from prunekit.structured import allocate


def parse_structure(text: str) -> tuple[str, ...]:
    from prunekit.structured.prune import STRUCTURES

    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in parts:
        if p not in STRUCTURES:
            raise PrunekitError(f"--structure {p!r} is unknown; choose from {', '.join(STRUCTURES)}")
    if not parts:
        raise PrunekitError(f"--structure is empty; choose from {', '.join(STRUCTURES)}")
    return parts


@STEPS.register("structured")
@dataclass
class StructuredStep(Step):
    """Physically remove MLP channels, attention heads or blocks: a smaller, faster dense model."""

    key_aliases = {"ratio": "sparsity"}

    method: str = option("flap", "a structured criterion (see `prunekit prune --help`)")
    structure: str | list[str] = option("mlp,heads", "mlp, heads, blocks (comma string or list)")
    sparsity: float | None = option(0.2, "fraction of the structures' parameters removed", min=0, below=1)
    remove: int | None = option(None, "number of blocks to remove (structure blocks)", min=0)
    allocation: str | None = option(None, f"{' | '.join(allocate.NAMES)}; default: the method's own",
                                    choices=allocate.NAMES)
    round_to: int = option(8, "kept MLP widths are multiples of this", min=1)
    floor: float = option(0.05, "global/blocks: every layer keeps at least this fraction of its units", min=0,
                          below=1)
    bias_compensation: bool | None = option(None, "add the removed channels' mean output to the bias; default: "
                                            "the method's own (FLAP: on)")
    widths: str = option("per-layer", "per-layer: each layer keeps what the allocation gives it (loaded by "
                         "prunekit.load_pretrained); uniform: every block the same widths, biases in the family's own "
                         "bias parameters, a folder plain from_pretrained loads", choices=allocate.WIDTHS)
    options: dict = option(default_factory=dict, help="criterion options, e.g. {beta: 0.5} for cfsp")

    def validate(self) -> None:

        if isinstance(self.structure, list):
            self.structure = ",".join(self.structure)
        parts = parse_structure(self.structure)
        if self.remove is not None:
            if "blocks" not in parts:
                raise PrunekitError(f"remove {self.remove} applies only to structure blocks, but structure is "
                                    f"{self.structure!r}; add blocks or drop remove")
            if parts == ("blocks",):
                self.sparsity = None  # remove N blocks: a fraction would be ignored
        if self.widths == "uniform" and self.allocation not in (None, "uniform"):
            raise PrunekitError(f"widths uniform keeps every block at the same widths, but allocation "
                                f"{self.allocation!r} gives each layer its own; drop the allocation or use widths "
                                "per-layer")
        CRITERIA.check(self.method, self.options)  # unknown criteria, unknown keys, types and ranges

    @property
    def ratio(self) -> float | None:
        """The old name of :attr:`sparsity` (the fraction of the structures' parameters removed)."""
        return self.sparsity

    def run(self, session):
        """Remove the structures from the session's model, calibrated on the session's windows."""
        if session.stream is not None:
            raise PrunekitError("structured pruning changes shapes; it runs on a model in memory")
        calib = CalibrationConfig(**{**session.calibration.to_dict(), "source": session.windows()})
        return apply_step(session.model, self, calib, session.tokenizer, session.progress)

    def kwargs(self) -> dict:
        """Keyword arguments of :func:`prunekit.structured.prune_structured`."""
        return {"method": self.method, "structure": self.structure, "ratio": self.sparsity, "remove": self.remove,
                "allocation": self.allocation, "round_to": self.round_to, "floor": self.floor,
                "bias_compensation": self.bias_compensation, "widths": self.widths, **self.options}


def apply_step(model, step: StructuredStep, calibration: CalibrationConfig | None = None, tokenizer=None,
               progress: bool = False, statistics=None):
    """Prune ``model`` in place by ``step``; returns the :class:`~prunekit.structured.prune.StructuredResult`."""
    from prunekit.structured.prune import prune_structured

    c = calibration or CalibrationConfig()
    return prune_structured(model, calibration=c.source, tokenizer=tokenizer, nsamples=c.nsamples, seqlen=c.seqlen,
                            seed=c.seed, progress=progress, statistics=statistics, **step.kwargs())
