"""Routing inside a ``litellm.Router``: which track serves a request of a dual-track model group.

A model group is **dual-track** when it has deployments on both tracks
(tagged or inferred, see ``tracks``). For each request to such a group:

1. the first attempt follows the optimizer: :class:`~dualtrack.router.policy.RoutingPolicy`
   turns the recommendation into a plan (local with probability
   ``local_bias``, the exploration floor, immediate overrides), exactly as the
   reference router plans;
2. a plan for ``parallel`` cannot be raced here: a routing hook picks *one*
   deployment for *one* call. It is served on one track, drawn with the
   class's ``local_bias`` as a single-track query would be, and counted in
   ``dualtrack_litellm_parallel_single_track_total``. (The race itself is
   :meth:`DualTrackLiteLLM.acompletion <dualtrack.integrations.litellm.DualTrackLiteLLM.acompletion>`.)
3. a retry LiteLLM makes after a failure goes to the other track (the
   reference router's fallback, once per failure), unless the policy has
   ``fallback=False``;
4. when every deployment of the chosen track is cooling down, the other
   track serves;
5. the call's ``timeout`` is the plan's ``timeouts_seconds[track]``, unless
   the caller passed its own.

``metadata={"dualtrack_track": "local"}`` on a call forces its track (the race
uses it for its legs). Groups with one track only are not steered.

Two hooks carry this, one per LiteLLM mechanism:

- :class:`DualTrackStrategy`, LiteLLM's custom routing strategy
  (``router.register_plugin``): sync and async calls; it replaces the
  Router's ``routing_strategy`` and picks within a track at random,
  weighted by ``litellm_params.weight`` (simple-shuffle), skipping
  deployments in cooldown;
- :class:`DualTrackFilter`, a deployment filter (``async_filter_deployments``):
  keeps the Router's own strategy within the track, but LiteLLM runs filters
  on async calls only, so sync calls are recorded and not steered.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import CustomRoutingStrategyBase
from litellm.types.router import RouterRateLimitError

from dualtrack.router.policy import RoutePlan, RoutingPolicy
from dualtrack.vocabulary import DEFAULT_TIMEOUTS_SECONDS, TRACKS, other_track

from .._prompt import prompt_text
from .recorder import CONTEXT_KEY, LiteLLMMetrics, as_mapping
from .tracks import TRACK_KEY, deployment_track

__all__ = ["DualTrackFilter", "DualTrackStrategy", "TrackChooser"]

_MAX_REQUESTS = 8192  # requests whose routing is remembered for their retries
_MAX_GROUPS = 1024  # model names whose deployments are cached (wildcard routes make many)
COOLDOWN_CACHE_SECONDS = 0.25
"""How long the strategy reuses a group's cooldown reading. Reading LiteLLM's cooldown store costs
more than the rest of the pick, so it is read at most this often per group, and again at once after
any failure the recorder sees (failures are what put deployments in cooldown)."""


@dataclass(frozen=True)
class Group:
    """A model group's deployments, split by track (cached per registry version)."""

    deployments: Tuple[Mapping[str, Any], ...]
    ids: Tuple[str, ...]
    by_track: Mapping[str, Tuple[Mapping[str, Any], ...]]
    tracks: Tuple[str, ...]  # the tracks the group has, in TRACKS order


@dataclass
class _Request:
    """What the first attempt of a request decided, for its retries."""

    plan: RoutePlan
    caller_timeout: bool  # the caller passed its own timeout: leave it alone
    track: str  # the track of the latest attempt
    seeded: bool = False  # planned by the caller (seed()): its first attempt is not a retry


class TrackChooser:
    """The decision both hooks share: for one Router, the track of each attempt."""

    def __init__(self, router: Any, policy: RoutingPolicy, metrics: LiteLLMMetrics) -> None:
        self.router = router
        self.policy = policy
        self.metrics = metrics
        self.enabled = True
        self._tracks: Dict[str, str] = {}  # deployment id -> track
        self._requests: "OrderedDict[Tuple[str, str], _Request]" = OrderedDict()
        self._lock = threading.Lock()
        self._groups: Dict[str, Tuple[int, Group]] = {}  # model -> (registry version, group)
        self._cooling: Dict[str, Tuple[float, int, FrozenSet[str]]] = {}  # model -> (until, failures, ids)
        self.failures: Callable[[], int] = lambda: 0  # the recorder's failure count (instrument wires it)
        # A view that reads the Router's live state (its version changes with every deployment change).
        self._registry = router.registry()

    def group(self, model: str) -> Group:
        """The deployments serving ``model`` (its group, aliases, wildcard routes), split by track."""
        registry = self._registry
        version = registry.version
        cached = self._groups.get(model)
        if cached is not None and cached[0] == version:
            return cached[1]
        deployments = tuple(registry.deployments(model) or ())
        split: Dict[str, List[Mapping[str, Any]]] = {t: [] for t in TRACKS}
        for deployment in deployments:
            split[self.track(deployment)].append(deployment)
        group = Group(deployments, tuple(i for i in map(_deployment_id, deployments) if i is not None),
                      {t: tuple(split[t]) for t in TRACKS}, tuple(t for t in TRACKS if split[t]))
        if len(self._groups) >= _MAX_GROUPS:
            self._groups.clear()
        self._groups[model] = (version, group)
        return group

    def cached_cooling(self, model: str) -> Optional[FrozenSet[str]]:
        """The group's deployments in cooldown as last read, while that reading is still good."""
        entry = self._cooling.get(model)
        if entry is not None and entry[0] > time.monotonic() and entry[1] == self.failures():
            return entry[2]
        return None

    def remember_cooling(self, model: str, active: Any, failures: int) -> FrozenSet[str]:
        cooling = frozenset(entry[0] for entry in active)
        if len(self._cooling) >= _MAX_GROUPS:
            self._cooling.clear()
        self._cooling[model] = (time.monotonic() + COOLDOWN_CACHE_SECONDS, failures, cooling)
        return cooling

    def deployment_tracks(self) -> Dict[str, str]:
        """Every deployment id of the Router and its track (a bad tag is a ``ValueError`` here, at set-up)."""
        tracks: Dict[str, str] = {}
        for deployment in self._registry.all():
            deployment_id = _deployment_id(deployment)
            if deployment_id is not None:
                tracks[deployment_id] = deployment_track(deployment)
        self._tracks.update(tracks)
        return tracks

    def track(self, deployment: Mapping[str, Any]) -> str:
        deployment_id = _deployment_id(deployment)
        if deployment_id is None:
            return deployment_track(deployment)
        track = self._tracks.get(deployment_id)
        if track is None:
            track = self._tracks[deployment_id] = deployment_track(deployment)
        return track

    def known_track(self, deployment_id: Any) -> Optional[str]:
        return self._tracks.get(deployment_id) if isinstance(deployment_id, str) else None

    def by_track(self, deployments: Sequence[Mapping[str, Any]]) -> Dict[str, List[Mapping[str, Any]]]:
        split: Dict[str, List[Mapping[str, Any]]] = {"local": [], "api": []}
        for deployment in deployments:
            split[self.track(deployment)].append(deployment)
        return split

    def owns(self, deployments: Sequence[Mapping[str, Any]]) -> bool:
        """Whether these deployments are this Router's (filters run for every Router in the process)."""
        return any(_deployment_id(d) in self._tracks for d in deployments)

    def choose(self, model: str, request: Optional[Mapping[str, Any]], messages: Any,
               group_tracks: Sequence[str], available: Sequence[str]) -> Optional[str]:
        """The track of this attempt, or ``None`` when dualtrack does not steer it.

        ``group_tracks``: the tracks the group has; ``available``: those with a
        deployment out of cooldown. Sets the call's timeout in ``request``
        when it is the live request (the custom strategy's) and the caller gave none.
        """
        metadata = _request_metadata(request)
        forced = metadata.get(TRACK_KEY)
        if forced in TRACKS:
            return str(forced)
        if not self.enabled or len(group_tracks) < 2 or messages is None:
            return None
        trace = request.get("litellm_trace_id") if request is not None else None
        key = (trace, model) if type(trace) is str else None
        state = self._requests.get(key) if key is not None else None  # a read needs no lock (one dict op)
        if state is None:
            context = as_mapping(metadata.get(CONTEXT_KEY))
            plan = self.policy.plan(prompt_text(messages), dict(context) if context else None)
            if plan.path in TRACKS:
                track = plan.path
            else:  # parallel: one call, one deployment (module docstring, point 2)
                self.metrics.single_track.inc()
                track = self._draw(plan)
            state = _Request(plan, request is not None and request.get("timeout") is not None, track)
            if key is not None:
                with self._lock:
                    self._requests[key] = state
                    while len(self._requests) > _MAX_REQUESTS:
                        self._requests.popitem(last=False)
        elif state.seeded:  # the first attempt of a request planned by seed()
            state.seeded = False
        elif self.policy.fallback:
            state.track = other_track(state.track)
        if state.track not in available and other_track(state.track) in available:
            state.track = other_track(state.track)
        if not state.caller_timeout and type(request) is dict:
            request["timeout"] = timeout_for(state.plan, state.track)
        return state.track

    def seed(self, trace: str, model: str, plan: RoutePlan, caller_timeout: bool) -> None:
        """Have request ``trace`` (its ``litellm_trace_id``) to group ``model`` follow ``plan``, made by
        the caller, instead of planning again: its first attempt goes to ``plan.path``, a retry to the
        other track as usual. (The hedged ``acompletion`` must know the track its first call is on.)"""
        state = _Request(plan, caller_timeout, plan.path, seeded=True)
        with self._lock:
            self._requests[(trace, model)] = state
            while len(self._requests) > _MAX_REQUESTS:
                self._requests.popitem(last=False)

    def planned(self, trace: Any, model: Any) -> Optional[_Request]:
        """What the request ``trace`` decided for group ``model`` (the filter's pre-call hook reads it)."""
        if not isinstance(trace, str) or not isinstance(model, str):
            return None
        return self._requests.get((trace, model))

    def _draw(self, plan: RoutePlan) -> str:
        floor = self.policy.floor
        share = min(max(float(plan.recommendation["routing"]["local_bias"]), floor), 1.0 - floor)
        return "local" if self.policy.rng.random() < share else "api"


def timeout_for(plan: RoutePlan, path: str) -> float:
    """The plan's timeout for ``path``; the default where the plan has none."""
    value = as_mapping(plan.timeouts_seconds).get(path)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_TIMEOUTS_SECONDS[path]


class DualTrackStrategy(CustomRoutingStrategyBase):
    """LiteLLM's custom routing strategy, with dualtrack choosing the track (module docstring)."""

    def __init__(self, chooser: TrackChooser, rng: Optional[random.Random] = None) -> None:
        self.chooser = chooser
        self.rng = rng or chooser.policy.rng

    def get_available_deployment(self, model: str, messages: Optional[List[Dict[str, str]]] = None,
                                 input: Any = None, specific_deployment: Optional[bool] = False,
                                 request_kwargs: Optional[Dict[str, Any]] = None) -> Any:
        chooser = self.chooser
        group = self._group(model, specific_deployment)
        cooling = chooser.cached_cooling(model) if group.ids else frozenset()
        if cooling is None:
            failures = chooser.failures()
            active = chooser.router.health().cooldowns.get_active_cooldowns(list(group.ids), None)
            cooling = chooser.remember_cooling(model, active, failures)
        return self._pick(model, group, cooling, messages, request_kwargs)

    async def async_get_available_deployment(self, model: str, messages: Optional[List[Dict[str, str]]] = None,
                                             input: Any = None, specific_deployment: Optional[bool] = False,
                                             request_kwargs: Optional[Dict[str, Any]] = None) -> Any:
        chooser = self.chooser
        group = self._group(model, specific_deployment)
        cooling = chooser.cached_cooling(model) if group.ids else frozenset()
        if cooling is None:
            failures = chooser.failures()
            active = await chooser.router.health().cooldowns.async_get_active_cooldowns(list(group.ids), None)
            cooling = chooser.remember_cooling(model, active, failures)
        return self._pick(model, group, cooling, messages, request_kwargs)

    def _group(self, model: str, specific: Optional[bool]) -> Group:
        if specific:  # the caller named one deployment (its litellm model or its id)
            named = [d for d in self.chooser.router.registry().all()
                     if d.get("litellm_params", {}).get("model") == model or _deployment_id(d) == model]
            if named:
                split = {t: tuple(d for d in named if self.chooser.track(d) == t) for t in TRACKS}
                return Group(tuple(named), tuple(i for i in map(_deployment_id, named) if i is not None), split,
                             tuple(t for t in TRACKS if split[t]))
        return self.chooser.group(model)

    def _pick(self, model: str, group: Group, cooling: FrozenSet[str], messages: Any,
              request: Optional[Dict[str, Any]]) -> Mapping[str, Any]:
        healthy: Mapping[str, Sequence[Mapping[str, Any]]] = group.by_track
        available: Sequence[str] = group.tracks
        if cooling:
            healthy = {t: [d for d in group.by_track[t] if _deployment_id(d) not in cooling] for t in TRACKS}
            available = [t for t in TRACKS if healthy[t]]
        track = self.chooser.choose(model, request, messages, group.tracks, available)
        candidates = healthy[track] if track is not None else [*healthy["local"], *healthy["api"]]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            if not group.deployments:  # what LiteLLM's own strategies say about a model it does not serve
                raise litellm.BadRequestError(message=f"You passed in model={model}. There are no healthy "
                                              "deployments for this model", model=model, llm_provider="")
            raise RouterRateLimitError(model=model, cooldown_time=0.0, enable_pre_call_checks=False,
                                       cooldown_list=sorted(cooling), model_ids=list(group.ids))
        return self.rng.choices(candidates, weights=[_weight(d) for d in candidates])[0]


class DualTrackFilter(CustomLogger):
    """A deployment filter: narrows an async call's healthy deployments to dualtrack's track and
    sets its timeout just before it is sent; the Router's own strategy picks within the track."""

    def __init__(self, chooser: TrackChooser) -> None:
        super().__init__()
        self.chooser = chooser

    async def async_filter_deployments(self, model: str, healthy_deployments: List[Any], messages: Any,
                                       request_kwargs: Optional[Dict[str, Any]] = None,
                                       parent_otel_span: Any = None) -> List[Any]:
        chooser = self.chooser
        if not healthy_deployments or not chooser.owns(healthy_deployments):
            return healthy_deployments
        split = chooser.by_track(healthy_deployments)
        available = [t for t in TRACKS if split[t]]
        # request_kwargs is LiteLLM's copy: the timeout is set in the pre-call hook below.
        track = chooser.choose(model, request_kwargs, messages, chooser.group(model).tracks, available)
        if track is None:
            return healthy_deployments
        return split[track]

    async def async_pre_call_deployment_hook(self, kwargs: Dict[str, Any], call_type: Any) -> Optional[Dict[str, Any]]:
        metadata = kwargs.get("metadata")
        group = metadata.get("model_group") if isinstance(metadata, Mapping) else None
        state = self.chooser.planned(kwargs.get("litellm_trace_id"), group)
        if state is None or state.caller_timeout:
            return None
        info = kwargs.get("model_info")
        deployment_id = info.get("id") if isinstance(info, Mapping) else None
        track = self.chooser.known_track(deployment_id)
        kwargs["timeout"] = timeout_for(state.plan, track or state.track)
        return kwargs


def _request_metadata(request: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    request = as_mapping(request)
    metadata = as_mapping(request.get("metadata"))
    return metadata if metadata else as_mapping(request.get("litellm_metadata"))


def _deployment_id(deployment: Any) -> Optional[str]:
    value = as_mapping(as_mapping(deployment).get("model_info")).get("id")
    return value if type(value) is str else None


def _weight(deployment: Mapping[str, Any]) -> float:
    params = deployment.get("litellm_params")
    value = params.get("weight") if isinstance(params, Mapping) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return 1.0
