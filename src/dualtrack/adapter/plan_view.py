"""What the objective-driven strategy believes, as Prometheus metrics: the plan's view.

The decision's reasons say it in words ("short: local 0.739 vs api 0.722
expected per query"); these metrics say it in numbers that Prometheus keeps,
so that what the adapter expected can be graphed against what happened:

- ``<prefix>_expected_value{path, query_class}``: the objective one query of
  the class is expected to earn when sent first to the path (its fallback
  included), the figures each class's share was chosen from;
- ``<prefix>_changes_detected_total{path, query_class, what}``: changes the
  estimator detected (``what``: success, latency, cost for a whole track,
  ``query_class=""``; quality for one class on one track); each restarts those
  estimates from the last interval. In a steady system these are its false
  alarms: their rate is the detector's noise;
- the estimates behind the compliance term, absent while unknown:
  ``<prefix>_estimated_local_slots`` (local calls served at once, inferred from
  waits), ``<prefix>_estimated_local_capacity`` (busy slots local carried when
  it last queued), ``<prefix>_estimated_local_memory_slots`` (busy local calls
  at which memory reaches its limit), ``<prefix>_estimated_api_rate_limit_per_second``;
- the plan against them: ``<prefix>_planned_local_load`` (busy local slots the
  chosen split expects, Erlangs) and ``<prefix>_planned_api_spend_dollars_per_hour``
  (planned only against a budget, ``max_cost_per_hour``).

Planned against measured is the plan's calibration in production: the
planned spend against ``sum(rate(dualtrack_cost_dollars_total[5m])) * 3600``,
the planned load against ``dualtrack_calls_in_flight{track="local"}``
(docs/metrics.md, the adapter dashboard).

The engine builds a :class:`PlanView` at the end of each objective cycle and
swaps it in whole; :class:`PlanCollector` reads the latest at scrape time, so a
scrape never sees a cycle half done. The adapter process exports it with the
prefix ``dualtrack_adapter``, the embedded optimizer with ``dualtrack_adaptation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # pragma: no cover - types only
    from .estimator import Estimator
    from .objective import Split

#: The scalar estimates: (metric suffix, help, estimator attribute).
ESTIMATES: Tuple[Tuple[str, str, str], ...] = (
    ("estimated_local_slots", "Local calls the local model serves at once, as inferred from waits.", "slots"),
    ("estimated_local_capacity", "Busy local slots (Erlangs) local carried when it last queued, grown while it "
                                 "keeps up.", "capacity"),
    ("estimated_local_memory_slots", "Busy local calls at which memory reaches its limit.", "memory_slots"),
    ("estimated_api_rate_limit_per_second", "Calls per second the API accepts, where a rate limit was seen binding.",
     "api_rate_limit"),
    ("planned_local_load", "Busy local slots (Erlangs) the chosen split expects.", "planned_load"),
    ("planned_api_spend_dollars_per_hour", "API spend the chosen split expects, dollars per hour (planned only "
                                           "against a budget).", "planned_spend"),
)

#: A change of a whole track is counted with this query class (no class).
WHOLE_TRACK = ""


@dataclass(frozen=True)
class PlanView:
    """One objective cycle's estimates and plan (immutable: swapped in whole)."""

    expected: Mapping[str, Mapping[str, float]]  # query class -> path -> expected objective per query
    estimates: Mapping[str, float]  # ESTIMATES attribute -> value (absent: unknown)
    changes: Mapping[Tuple[str, str, str], int] = field(default_factory=dict)  # (path, class, what) -> count


def plan_view(estimator: "Estimator", split: "Split", changes: Mapping[Tuple[str, str, str], int]) -> PlanView:
    """The view of a cycle that ended with ``split`` from ``estimator``; ``changes`` are the counts so far."""
    estimates = {}
    for _, _, attribute in ESTIMATES:
        value = getattr(estimator, attribute)
        if value is not None:
            estimates[attribute] = float(value)
    return PlanView(expected={c: dict(v) for c, v in split.expected.items()}, estimates=estimates,
                    changes=dict(changes))


def change_key(where: str, what: str) -> Tuple[str, str, str]:
    """``(path, query_class, what)`` of an estimator event (``"local"`` or ``"api:short"``, ``"latency"``)."""
    path, _, query_class = where.partition(":")
    return path, query_class or WHOLE_TRACK, what


class PlanCollector(Collector):
    """Scrape-time metrics of the latest :class:`PlanView` (nothing before the first objective cycle)."""

    def __init__(self, view: Callable[[], Optional[PlanView]], prefix: str) -> None:
        self._view = view
        self.prefix = prefix

    def describe(self) -> Iterator[Any]:
        return iter(())  # collected lazily: the families exist once a cycle has run

    def collect(self) -> Iterator[Any]:
        view = self._view()
        if view is None:
            return
        p = self.prefix
        expected = GaugeMetricFamily(f"{p}_expected_value",
                                     "Objective one query of the class is expected to earn sent first to the path "
                                     "(fallback included): what each class's share was chosen from.",
                                     labels=["path", "query_class"])
        for query_class, by_path in sorted(view.expected.items()):
            for path, value in sorted(by_path.items()):
                expected.add_metric([path, query_class], value)
        yield expected
        changes = CounterMetricFamily(f"{p}_changes_detected",
                                      "Changes the estimator detected (each restarts those estimates): whole-track "
                                      "success, latency or cost (query_class=\"\"), or one class's quality.",
                                      labels=["path", "query_class", "what"])
        for (path, query_class, what), count in sorted(view.changes.items()):
            changes.add_metric([path, query_class, what], count)
        yield changes
        for suffix, help_text, attribute in ESTIMATES:
            if attribute in view.estimates:
                yield GaugeMetricFamily(f"{p}_{suffix}", help_text, value=view.estimates[attribute])


def merged_changes(counts: Dict[Tuple[str, str, str], int], events: Mapping[str, str]) -> None:
    """Add one cycle's estimator events to ``counts`` (in place)."""
    for where, what in events.items():
        key = change_key(where, what)
        counts[key] = counts.get(key, 0) + 1


__all__ = ["ESTIMATES", "PlanCollector", "PlanView", "WHOLE_TRACK", "change_key", "merged_changes", "plan_view"]
