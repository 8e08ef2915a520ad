"""The composite objective: one number to rank routing policies by, and what
the objective-driven strategies maximize (their ``objective:`` weights name
these terms).

    J = 0.35 * U + 0.25 * W + 0.15 * Q + 0.10 * S + 0.15 * A        (0..1, higher is better)

- ``U`` useful answers: share of all requests answered with a quality at or
  above the quality floor (``min_quality_score``); a failed request and an
  answer below the floor are equally useless to the user;
- ``W`` within target: share of all requests answered successfully within
  the latency target (``target_latency_ms``);
- ``Q`` quality: mean quality score (0..1) of the answers given, which
  rewards quality above the floor;
- ``S`` savings: ``1 - min(1, cost / all-API cost)``, where the all-API cost
  is what the same queries would have cost on the API at the prices of the
  moment (0 = spent as much as sending everything to the API, 1 = free);
- ``A`` compliance: share of the run's time with no resource or budget
  constraint violated (memory, CPU, GPU memory, battery, cost per hour).

Why these weights (``docs/benchmarks.md`` says more): a useful answer is
what the application exists for, so it weighs most; meeting the latency
target is the spec's first success criterion; quality above the floor,
cost and constraint compliance follow. Cost weighs least because the spec
asks for lower API cost *while maintaining quality*: a saving must not buy
answers below the quality floor. Every term is a share in 0..1, so the
weights read as the share of the score each concern controls, and ``J`` is
comparable across scenarios of different lengths and rates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Tuple

#: The objective's terms, in the order they are written.
TERMS: Tuple[str, ...] = ("useful", "within_target", "quality", "savings", "compliance")


@dataclass(frozen=True)
class Objective:
    useful: float = 0.35
    within_target: float = 0.25
    quality: float = 0.15
    savings: float = 0.10
    compliance: float = 0.15

    def __post_init__(self) -> None:
        total = sum(asdict(self).values())
        if abs(total - 1.0) > 1e-9 or any(v < 0 for v in asdict(self).values()):
            raise ValueError(f"objective weights must be non-negative and add up to 1, got {asdict(self)}")

    def components(self, summary: Mapping[str, Any]) -> Dict[str, float]:
        """The five terms (each 0..1) from a simulation summary."""
        cost_ratio = summary.get("cost_ratio")
        return {
            "useful": float(summary["useful_ratio"]),
            "within_target": float(summary["within_target_ratio"]),
            "quality": float(summary.get("quality_mean") or 0.0),
            "savings": 1.0 - min(1.0, float(cost_ratio)) if cost_ratio is not None else 0.0,
            "compliance": 1.0 - float(summary["violation_ratio"]),
        }

    def score(self, summary: Mapping[str, Any]) -> float:
        c = self.components(summary)
        return (self.useful * c["useful"] + self.within_target * c["within_target"]
                + self.quality * c["quality"] + self.savings * c["savings"]
                + self.compliance * c["compliance"])

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


#: The objective the adaptation benchmark ranks policies by.
OBJECTIVE = Objective()

__all__ = ["OBJECTIVE", "TERMS", "Objective"]
