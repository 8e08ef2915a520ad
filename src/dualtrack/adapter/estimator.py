"""What each track is worth for each query class, estimated from recent evidence.

Every adaptation cycle the estimator reads the last interval's counts per
track and query class (the ``interval_*`` signals: calls, successes,
timeouts, answers within the latency target, useful answers, quality, cost,
latency) and folds them into decayed tallies: last interval's evidence weighs
1, the one before ``decay``, the one before ``decay**2``... so the estimates
follow the recent past and forget the old.

Decay alone would take several intervals to believe a change, so changes are
*detected*: when an interval's pooled success rate, within-target rate,
latency or price of a track departs from its estimate by more than chance
allows (``change_z`` standard errors), the track's tallies restart from that
interval. An outage or a recovery is then believed within one interval.
Quality is checked the same way per track and class (a CUSUM), and its
evidence is kept longer (``quality_decay``). Latency and price are
means of calls that vary among themselves (tokens vary within a class), so a
ratio counts as a change only beyond both its floor (x1.5 latency, x1.25
price) and chance for the interval's number of calls: on the few calls of a
probed track, a ratio of 2 can be chance, and restarting the estimates on it
throws away good evidence (and lets the class change track on noise). A
track that only a few calls an interval watch (the probes of a track no
class chooses) is judged on the calls of the intervals since it was last
judged, once they are ``min_calls``: the end of a throttle or of an outage
shows in three or four calls, not in one interval's one or two.

The local track's latency also grows with its own load. The estimator keeps
each class's base service time on local (its latency while the track is not
congested) and a capacity budget in *Erlangs* (busy slots): cut to what was
offered when latency shows queueing, raised while the track keeps up and the
traffic would use more. The slots inferred from waits are raised the same
way: the fewest slots that explain a wait are only a lower bound. A slower
model (thermal throttling) shows as a longer base service time at low load,
not as less capacity: slow at a load that would queue little (under half the
capacity seen, or by Erlang C at the slots local was seen to carry load
with), the base service times follow the latency, and the slots are not
inferred from that interval's "waits". Judged by the capacity alone, a
throttle that began at a load near it was read as queueing: the capacity
was cut again and again, the slots fell to their floor, and the plan kept
too little local load for a model that was only slower. But not while the
routers count more local calls in flight than the slots: a saturated server
finishes calls at its own pace, so the load it finished looks small, and its
queue's waits read as a slower model took them into the base service times
(x7 for short answers in random_89_018, after which the slots grew to 48).
Memory against local load is fitted with a line,
which says at how many busy slots memory reaches its limit. Each point
pairs a memory reading with the local calls counted at the same moment (the
resource monitor's load probe, exported as
``dualtrack_resource_reading_local_calls``): against the interval's mean
load, a steady load leaves the line without a slope. Each interval also
gives it two more points where the monitor keeps its readings: the
interval's fullest reading and its emptiest, each at the calls counted with
it (``*_max``, ``*_min``). The reading at the cycle is one moment: memory
that went over its limit between two cycles, until an immediate override
moved load off local, was under it again by then, and the plan kept sending
local the load that put it over (the random suite's first five minutes:
30-86 s over a memory limit in 8 of 40 scenarios of seeds 179-180 where the
split was over for 0-10). Until the line has
points enough (three intervals), a reading that finds memory over its limit
puts all of memory down to local load (a line through zero, which says fewer
slots than memory holds), and that guess stands through readings under the
limit until the line is fitted: the first plans would otherwise send local
as much as it carries while memory is over its limit (in the random suite's
seeds 89-90, memory over its limit in the first two minutes cost about 0.05
points of J per scenario, a tenth of the gap to the hindsight split; with
the guess forgotten at the next reading under the limit and five intervals
to a line, seeds 121-124 were over a limit 2,003 s in their first five
minutes, 1,783 s with both changed).

What a query usually costs on the API (its cost per successful call over the
classes' mix, decayed over about a hundred intervals) scales the savings
term: the run's savings add up each query at the prices of its moment, so
during a price spike an API query costs more savings than usual, and a price
cut makes it cheaper. Scaled by the prices of the moment instead, a price
change would leave every choice as it was.

A rate limit is not a failure. Calls the API refused with HTTP 429
(``interval_rate_limited``) are taken out of its evidence, so that a full
API is not valued as a failing one; what it accepted in an interval where it
refused calls (at least ``rate_limit_least`` and ``rate_limit_share`` of
them) is its limit, ``api_rate_limit`` in calls per second, which the split
plans within. It is counted over the last minute (at least one interval):
a limit counts calls per minute, so an interval shorter than that accepts
more or less than its share as the minute's window moves (at 30-second
intervals the accepted calls alternated between about 230 and 420 a minute
against a limit of about 400). Near that limit with nothing refused, the
limit is tried ``rate_limit_growth`` higher each cycle (it may have been
raised or lifted) and forgotten once all the traffic would fit within it.

A hanging API shows before its calls time out. The routers count their API
calls in flight (``api_calls_in_flight``); by Little's law a track holds
about its call rate times its mean latency, so calls in flight far beyond
that (``hang_z`` standard deviations and ``hang_least`` calls) are calls the
API holds: they are counted at once as the interval's timeouts, and a hang
is believed in the cycle after it starts, not after the timeouts fire (up to
a timeout plus an interval later).

Where the local model server exports its own load (``local_server_*``
signals: vLLM, llama.cpp, SGLang, TGI through ``local_server_rules.yml``, or
the server's ``/metrics`` scraped in embedded mode), the estimator does not
wait for finished calls to show queueing: a queue beyond what the planned
load explains (Erlang C at the server's slots) means the local track took
more than it can carry *now*, and a server capacity is cut to what was sent,
one interval after the queue formed instead of after the queued calls
finished. The server's slots replace the ones inferred from waits. The
scraped gauges lag (one scrape interval, seconds); the routers' own count of
local calls in flight does not, so the queue is taken as the larger of the
server's and ``calls in flight - slots``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields, replace
from typing import Deque, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ..vocabulary import TRACKS
from .signals import SignalValues

#: A rate limit counts the calls of a window of this many seconds (requests per minute).
RATE_LIMIT_WINDOW_SECONDS = 60.0
#: The budget is judged on the spend of a trailing window of this many seconds (the benchmark's,
#: and an alert's on ``rate(dualtrack_cost_dollars_total[5m])``): :attr:`Estimator.spent` covers it.
BUDGET_WINDOW_SECONDS = 300.0

#: The per-interval counts the estimator reads, per ``path`` and ``query_class``.
INTERVAL_SIGNALS: Tuple[str, ...] = (
    "interval_calls", "interval_successes", "interval_timeouts", "interval_within_target", "interval_useful",
    "interval_quality_sum", "interval_quality_count", "interval_cost_dollars", "interval_latency_sum",
    "interval_latency_count", "interval_rate_limited",
)


@dataclass
class Tally:
    """Counts for one track and class: one interval's, or decayed sums of many."""

    calls: float = 0.0  # decided calls (cancelled excluded)
    successes: float = 0.0
    timeouts: float = 0.0
    within: float = 0.0  # successes within the latency target
    useful: float = 0.0  # successes at or above the quality floor
    quality_sum: float = 0.0
    quality_count: float = 0.0
    cost: float = 0.0  # dollars, every call
    latency_sum: float = 0.0
    latency_count: float = 0.0
    rate_limited: float = 0.0  # calls refused by a rate limit (HTTP 429), among the calls

    @classmethod
    def from_signals(cls, values: SignalValues, track: str, query_class: str) -> "Tally":
        labels = {"path": track, "query_class": query_class}
        got = [values.get(name, labels) for name in INTERVAL_SIGNALS]
        return cls(*(max(0.0, v) if v is not None else 0.0 for v in got))

    def scaled(self, factor: float) -> "Tally":
        return Tally(*(getattr(self, f.name) * factor for f in fields(self)))

    def aged(self, decay: float, quality_decay: float) -> "Tally":
        """One cycle older: the answers' quality evidence (``useful``, ``quality_sum``,
        ``quality_count``) weighed by ``quality_decay``, everything else by ``decay``."""
        return replace(self.scaled(decay), useful=self.useful * quality_decay,
                       quality_sum=self.quality_sum * quality_decay, quality_count=self.quality_count * quality_decay)

    def plus(self, other: "Tally") -> "Tally":
        return Tally(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    # -- ratios (None: no evidence)

    @property
    def success_rate(self) -> Optional[float]:
        return self.successes / self.calls if self.calls > 0 else None

    @property
    def within_rate(self) -> Optional[float]:
        """Share of successful answers given within the latency target."""
        return self.within / self.successes if self.successes > 0 else None

    @property
    def useful_rate(self) -> Optional[float]:
        """Share of scored answers at or above the quality floor."""
        return min(1.0, self.useful / self.quality_count) if self.quality_count > 0 else None

    @property
    def quality(self) -> Optional[float]:
        return self.quality_sum / self.quality_count if self.quality_count > 0 else None

    @property
    def cost_per_call(self) -> Optional[float]:
        return self.cost / self.calls if self.calls > 0 else None

    @property
    def mean_latency(self) -> Optional[float]:
        return self.latency_sum / self.latency_count if self.latency_count > 0 else None


def _pool(tallies: Iterable[Tally]) -> Tally:
    out = Tally()
    for t in tallies:
        out = out.plus(t)
    return out


def _llr(successes: float, n: float, p0: float, p1: float) -> float:
    """Log-likelihood ratio of ``successes`` in ``n`` trials under p1 against p0."""
    return successes * math.log(p1 / p0) + (n - successes) * math.log((1.0 - p1) / (1.0 - p0))


def _departs(observed: float, n: float, expected: float, z: float, slack: float) -> bool:
    """Is a rate of ``observed`` over ``n`` trials more than chance away from ``expected``?"""
    p = min(max(expected, 0.02), 0.98)
    return abs(observed - expected) > z * math.sqrt(p * (1.0 - p) / n) + slack


def _beyond(ratio: float, least: float, dispersion: float, n: float, z: float) -> bool:
    """Is an interval's mean, ``ratio`` times what was expected, a change? Beyond ``least`` (or
    1/``least``), and beyond chance: ``z`` standard errors of the log of a mean of ``n`` calls
    whose own spread (lognormal sigma) is ``dispersion``."""
    if ratio <= 0:
        return True
    return abs(math.log(ratio)) > max(math.log(least), z * dispersion / math.sqrt(max(n, 1.0)))


@dataclass(frozen=True)
class EstimatorSettings:
    decay: float = 0.7  # weight of the previous tallies at each cycle
    # The same for the answers' quality evidence (useful, quality): a slow property of the model
    # for a class, whose changes the quality CUSUM detects (and then drops the old evidence).
    quality_decay: float = 0.9
    arrival_decay: float = 0.3  # the same for the arrival rates
    change_z: float = 3.0  # standard errors for a change
    change_slack: float = 0.05  # and at least this much (rates)
    min_calls: float = 4.0  # an interval needs this many calls to signal a change (or cut the capacity)
    latency_change: float = 1.5  # a pooled latency ratio beyond x1.5 (or /1.5) is a change
    cost_change: float = 1.25  # a pooled price ratio beyond x1.25 (or /1.25) is a change
    latency_dispersion: float = 0.5  # spread of one call's latency around its class's (lognormal sigma)
    cost_dispersion: float = 0.6  # the same for its cost (tokens vary within a class)
    hang_z: float = 4.0  # API calls in flight beyond Little's law by this many standard deviations...
    hang_least: float = 3.0  # ...and this many calls: the API holds them (a hang)
    congested_inflation: float = 1.4  # local latency over base x this, at load: queueing
    uncongested_inflation: float = 1.15  # below this: keeping up
    capacity_cut: float = 0.85  # on queueing: capacity = this x what was offered
    capacity_growth: float = 1.25  # while keeping up and wanted: capacity x this per cycle
    base_learning_rate: float = 0.3  # how fast base service times follow uncongested latency
    rejected_share: float = 0.15  # local calls failing beyond this share (and 3x the usual) at load: rejected
    base_min_success: float = 0.9  # base service times learn only from intervals this successful
    memory_decay: float = 0.97  # memory per busy slot is a slow property of the model: long memory
    # Weight of the older all-API cost per query at each cycle: a query's savings are judged
    # against what queries usually cost on the API, so a price spike makes the API dearer.
    price_memory: float = 0.99
    battery_decay: float = 0.9  # the battery's drain per busy slot: a property of the machine, read noisily
    spend_learning_rate: float = 0.3  # how fast the spend bias follows measured over planned spend
    quality_shift: float = 0.25  # the useful-rate shift the quality CUSUM looks for
    quality_alarm: float = 2.5  # its alarm threshold (log-likelihood ratio)
    rate_limit_least: float = 3.0  # calls refused in an interval for a rate limit to count...
    rate_limit_share: float = 0.02  # ...and this share of the API's calls
    rate_limit_near: float = 0.8  # calls at this share of the limit, none refused: it may be higher
    rate_limit_growth: float = 1.2  # then the limit is tried this much higher per cycle
    server_queue_margin: float = 2.0  # a server queue beyond this x the expected one (and 1 + 1/4 slot): full
    kv_cache_full: float = 0.98  # KV-cache usage at which a server with a queue is full
    preemptions_full: float = 0.1  # preemptions per second at which a server is full


def _without_rate_limited(t: Tally) -> Tally:
    """The tally without its calls refused by a rate limit. A refusal takes a round trip, not an
    answer's time: its latency is left in the sum as nothing (a mean a little high, at worst)."""
    if t.rate_limited <= 0:
        return t
    return replace(t, calls=max(0.0, t.calls - t.rate_limited),
                   latency_count=max(0.0, t.latency_count - t.rate_limited), rate_limited=0.0)


@dataclass
class TrackState:
    tallies: Dict[str, Tally] = field(default_factory=dict)
    changes: int = 0  # changes detected (for the reasons)
    # Per class: CUSUM statistics (up, down) of the useful rate. A drift of a
    # class's quality shows on a few answers per interval (a probed track), so
    # the evidence is accumulated across intervals until it is conclusive.
    quality_cusum: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    # Per class: the calls of the last intervals that were too few to judge a change of the
    # track alone (fewer than ``min_calls`` in all), pooled until they are enough.
    pending: Dict[str, Tally] = field(default_factory=dict)


class Estimator:
    """Decayed per-track, per-class evidence with change detection, and the local capacity.

    >>> est = Estimator(("short", "long"))
    >>> events = est.update(values, interval_seconds=30)
    >>> est.tally("local", "short").success_rate
    """

    def __init__(self, query_classes: Iterable[str], settings: EstimatorSettings = EstimatorSettings()) -> None:
        self.classes = tuple(query_classes)
        self.settings = settings
        self.tracks: Dict[str, TrackState] = {t: TrackState() for t in TRACKS}
        self.arrivals: Dict[str, float] = {}  # requests per second per class (decayed)
        self.base_service: Dict[str, float] = {}  # local base service time per class, seconds
        self.capacity: Optional[float] = None  # local capacity budget, Erlangs
        self.cycles_since_queued: Optional[int] = None  # cycles since local last queued (cut the capacity)
        self.wanted_load: Optional[float] = None  # set by the optimizer: local load it would use uncapped
        # The local server's slots, inferred from the queueing it shows (Erlang C): the
        # fewest slots consistent with the calls seen waiting, and at least what was
        # seen carried without waiting; raised by steps while the track keeps up near
        # them and the split wants more (a lower bound is otherwise never tested).
        self.slots: Optional[float] = None
        self._slots_seen_free = 0
        self.local_wait: float = 0.0  # seconds the last interval's local calls waited, on average
        self._usual_local_failures: Optional[float] = None
        # Memory and GPU memory (each a share of its limit) against local load: a line for
        # each, fitted over the intervals. One line through the larger of the two would bend
        # where the other takes over, and miss where the steeper one reaches its limit.
        self._memory_lines = {name: _DecayedLine(settings.memory_decay) for name in MEMORY_SIGNALS}
        self.memory_slots: Optional[float] = None  # busy local slots at which memory reaches its limit
        # Per memory, the slots its last reading over the limit said, kept until its line is fitted.
        self._memory_guesses: Dict[str, float] = {}
        # The battery's drain (share of a full charge per hour) against local load, while on
        # battery power: a line as for memory, (idle drain, drain per busy local slot).
        self._battery_line = _DecayedLine(settings.battery_decay)
        self.battery_drain: Optional[Tuple[float, float]] = None
        self.battery_room: Optional[float] = None  # charge above the threshold, on battery power only
        # What a query usually costs on the API (decayed over many intervals, weighted by
        # queries): the scale of the savings term. None until the API has answered.
        self.usual_api_cost: Optional[float] = None
        self._api_cost_sums = [0.0, 0.0]  # decayed sums of (cost per query x queries, queries)
        # Spend measured over spend planned (decayed): the planned spend is an estimate,
        # and the budget is judged on what was really spent.
        self.spend_bias = 1.0
        self.planned_spend: Optional[float] = None  # set by the split: $/h it planned
        # Dollars spent in each of the last intervals, newest last (the budget is judged on a
        # trailing window: what was spent lately is part of what the next minutes will read).
        self.spent: List[float] = []
        # The local server's own signals, when it exports them (None: it does not).
        self.planned_load: Optional[float] = None  # set by the split: local Erlangs it planned
        self.server_queue: Optional[float] = None  # requests waiting (server's gauge or calls in flight - slots)
        self.server_capacity: Optional[float] = None  # Erlangs the server was seen to carry without a queue
        # (track, class) pairs whose answers changed on their own (a quality change of that class
        # alone), until the class chooses that track again: the other classes' traffic there says
        # nothing of its recovery, so its probe there is not cut (SplitPlanner). With the
        # objective's ``probe_after_change``, also the classes on a track when a change was
        # detected there: they watch it for its recovery once they have left it.
        self.own_changes: Set[Tuple[str, str]] = set()
        self.server_full = False  # the last reading showed the server over what the plan explains
        # Cycles in a row each class's gain has pointed away from the track it is held on, within
        # the noise (SplitPlanner: a class follows a gain that keeps pointing the same way).
        self.held_against: Dict[str, int] = {}
        # Calls per track in the last interval: with fewer than ``min_calls`` the track's
        # estimates are the old ones (decay keeps the rates of the evidence it has).
        self.interval_calls: Dict[str, float] = {t: 0.0 for t in TRACKS}
        # The API's rate limit, as calls per second it accepts (None: none seen binding).
        self.api_rate_limit: Optional[float] = None
        self._api_accepted: Deque[Tuple[float, float]] = deque()  # (calls accepted, seconds) of recent intervals

    def tally(self, track: str, query_class: str) -> Tally:
        return self.tracks[track].tallies.get(query_class, Tally())

    def pooled(self, track: str) -> Tally:
        return _pool(self.tracks[track].tallies.values())

    def service_time(self, query_class: str) -> Optional[float]:
        """A class's base service time on local, seconds; for a class local has not answered
        yet, a prior: the classes it has answered, each scaled by how much longer the class
        takes than it on the API (answers' length drives both tracks' times), or else the
        longest seen. None before local has answered any class.

        Without the prior a class local has yet to answer would plan as no load at all:
        at a cold start the first interval's answers are the short calls (the long ones
        are still running), and the first plan sent every long query local for free.
        """
        base = self.base_service
        if query_class in base:
            return base[query_class]
        if not base:
            return None
        api = self.tally("api", query_class).mean_latency
        scaled = []
        for c, seconds in base.items():
            other = self.tally("api", c).mean_latency
            if api is not None and other:
                scaled.append(seconds * api / other)
        return sum(scaled) / len(scaled) if scaled else max(base.values())

    # ------------------------------------------------------------ update

    def update(self, values: SignalValues, interval_seconds: float) -> Dict[str, str]:
        """Fold one interval's counts in; return the changes detected (track or track:class -> what)."""
        s = self.settings
        if self.cycles_since_queued is not None:
            self.cycles_since_queued += 1
        events: Dict[str, str] = {}
        fresh = {t: {c: Tally.from_signals(values, t, c) for c in self.classes} for t in TRACKS}
        decided = {t: sum(fresh[t][c].calls for c in self.classes) for t in TRACKS}
        kept = max(1, math.ceil(BUDGET_WINDOW_SECONDS / interval_seconds)) if interval_seconds > 0 else 1
        self.spent = (self.spent + [sum(fresh[t][c].cost for t in TRACKS for c in self.classes)])[-kept:]
        # The API's call rate: of this interval or the last, whichever is higher (a hang leaves
        # this interval with few decided calls).
        rate = max(decided["api"], self.interval_calls["api"]) / interval_seconds
        hanging = self._hanging_api_calls(values.get("api_calls_in_flight", {}), rate)
        self.interval_calls = decided
        self._update_rate_limit(fresh["api"], interval_seconds)
        # A call refused by the rate limit says nothing of the API's answers: it is the
        # limit's (planned against api_rate_limit), not a failure of the class on the API.
        fresh["api"] = {c: _without_rate_limited(t) for c, t in fresh["api"].items()}
        if hanging > 0:
            # Calls the API holds far beyond its usual time are failures to come (a hang, an
            # outage without an answer): counted now as timeouts, not when their timeouts fire.
            fresh["api"] = self._with_timeouts(fresh["api"], hanging)
        for c in self.classes:
            # Arrivals are news, not evidence to pool: a burst is the load of now. A failed
            # first try is followed by a fallback call: calls minus failures counts queries.
            calls = sum(fresh[t][c].calls for t in TRACKS)
            failures = sum(fresh[t][c].calls - fresh[t][c].successes for t in TRACKS)
            rate = max(calls - failures, 0.5 * calls) / interval_seconds
            previous = self.arrivals.get(c)
            self.arrivals[c] = rate if previous is None else s.arrival_decay * previous + (1 - s.arrival_decay) * rate
        for track in TRACKS:
            state = self.tracks[track]
            # A track a few calls an interval watch (its probes) is judged on the calls of the
            # intervals since it was last judged, once they are ``min_calls``: a slowdown or its
            # end shows in a few calls, not in one interval's one or two.
            earlier = state.pending
            judged = {c: earlier[c].plus(t) if c in earlier else t for c, t in fresh[track].items()}
            if sum(t.calls for t in judged.values()) < s.min_calls:
                state.pending = judged
                what = None
            else:
                state.pending = {}
                what = self._detect_track_change(track, judged)
            restarted = bool(what)
            if what:
                events[track] = what
                state.changes += 1
                self._restart_track(track, judged, what)
            for c in self.classes:
                new = fresh[track][c]
                old = state.tallies.get(c)
                if old is not None and self._quality_changed(state, c, old, new):
                    events[f"{track}:{c}"] = "quality"
                    self.own_changes.add((track, c))
                    old = Tally(old.calls, old.successes, old.timeouts, old.within, cost=old.cost,
                                latency_sum=old.latency_sum, latency_count=old.latency_count)
                if restarted and c in earlier:
                    # After a restart the tallies start from the calls the track was judged on
                    # (the restart kept the earlier ones' quality: not counted twice).
                    new = new.plus(replace(earlier[c], useful=0.0, quality_sum=0.0, quality_count=0.0))
                state.tallies[c] = new if old is None else old.aged(s.decay, s.quality_decay).plus(new)
        self._correct_spend(values.get("cost_burn_dollars_per_hour", {}))
        memory = {name: v for name in MEMORY_SIGNALS if (v := values.get(name, {})) is not None}
        busy_now, capped = self._busy_counts(values)
        if capped:
            # More local calls than the slots seen: how many of them were being served (and
            # held memory) is not known, and the slots may be underestimated. Fitted at the
            # cap, such a reading steepens the line: in random_61_009 (a burst; 64 slots, 15
            # seen) memory's limit came out at 12-14 busy calls where the GPU holds 28.
            memory = {}
        self._update_local_capacity(fresh["local"], interval_seconds, memory, busy_now, queued=capped)
        self._fit_memory_extremes(values)
        self._update_battery(values, busy_now)
        self._update_usual_api_cost(sum(self.arrivals.get(c, 0.0) for c in self.classes) * interval_seconds)
        self._update_from_server(values)
        return events

    def _update_rate_limit(self, fresh: Mapping[str, Tally], interval_seconds: float) -> None:
        """The API's rate limit (calls per second it accepts) from the interval's refusals."""
        s = self.settings
        calls = sum(t.calls for t in fresh.values())
        limited = sum(t.rate_limited for t in fresh.values())
        if calls <= 0 or interval_seconds <= 0:
            return
        rate = calls / interval_seconds
        # What the API accepted over the last minute (at least this interval): one interval of a
        # shorter length accepts more or less than its share as the limit's window moves.
        window = self._api_accepted
        window.append((calls - limited, interval_seconds))
        span = sum(d for _, d in window)
        while span - window[0][1] >= RATE_LIMIT_WINDOW_SECONDS:
            span -= window.popleft()[1]
        if limited >= s.rate_limit_least and limited >= s.rate_limit_share * calls:
            # The API refused what it did not accept: what it accepted is its limit.
            self.api_rate_limit = sum(a for a, _ in window) / span
        elif limited < 0.5 and self.api_rate_limit is not None and rate >= s.rate_limit_near * self.api_rate_limit:
            # Near the limit and nothing refused: it may have been raised or lifted; try more.
            self.api_rate_limit = max(self.api_rate_limit, rate) * s.rate_limit_growth
            if self.api_rate_limit * s.rate_limit_near > sum(self.arrivals.values()):
                self.api_rate_limit = None  # all the traffic would fit: no limit binds

    def _hanging_api_calls(self, in_flight: Optional[float], rate: float) -> float:
        """API calls in flight beyond what its call ``rate`` (per second) and usual latency explain
        (Little's law: rate x mean latency, and chance around it), or 0."""
        if in_flight is None or in_flight <= 0:
            return 0.0
        mean = self.pooled("api").mean_latency
        if mean is None:
            return 0.0
        expected = rate * mean
        excess = in_flight - expected
        return excess if excess > self.settings.hang_z * math.sqrt(expected) + self.settings.hang_least else 0.0

    def _with_timeouts(self, fresh: Mapping[str, Tally], calls: float) -> Dict[str, Tally]:
        """The interval's API evidence with ``calls`` more timeouts, shared as its classes' calls are."""
        weights = {c: fresh[c].calls or self.tally("api", c).calls for c in self.classes}
        total = sum(weights.values())
        out = {}
        for c in self.classes:
            t = fresh[c]
            extra = calls * (weights[c] / total if total > 0 else 1.0 / len(self.classes))
            out[c] = replace(t, calls=t.calls + extra, timeouts=t.timeouts + extra)
        return out

    def _busy_counts(self, values: SignalValues) -> Tuple[Optional[float], bool]:
        """Local calls being served at the moment of the memory reading, where a signal says it,
        and whether the count was capped at the slots.

        Memory is read at a moment, and at a moment it follows the calls being
        served then, not the interval's mean load: regressed on the mean, a
        steady load leaves the line without a slope (too little spread), while
        the count of the moment varies call by call. Best is the count the
        monitor took with the reading (``memory_reading_local_calls``); else
        the server's running requests, else the routers' local calls in
        flight, both read a little later than the memory. The routers' counts
        also hold calls waiting for a slot, so they are capped at the slots.
        """
        mine = values.get("memory_reading_local_calls", {})
        if mine is None:
            running = values.get("local_server_running", {})
            if running is not None:
                return running, False
            mine = values.get("local_calls_in_flight", {})
        if mine is None:
            return None, False
        if self._beyond_slots(mine):
            return self.slots, True
        return mine, False

    def _beyond_slots(self, calls: float) -> bool:
        """Do the routers count more local calls than the slots? The rest wait for a slot and hold
        no memory: how many were served is not known."""
        return bool(self.slots) and calls > (self.slots or 0.0)

    def _update_from_server(self, values: SignalValues) -> None:
        """Fold in the local server's own load signals (nothing when it exports none)."""
        s = self.settings
        queue = values.get("local_server_queue_depth", {})
        if queue is None:
            # No reading (never, or the scrapes stopped): plan as without the server's signals,
            # not on a cap the last reading left behind.
            self.server_queue = None
            self.server_capacity = None
            self.server_full = False
            return
        running = values.get("local_server_running", {})
        slots = values.get("local_server_slots", {})
        if slots is None and running is not None and queue >= 1:
            slots = max(running, self.slots or 0.0)  # something waits: every slot is busy
        mine = values.get("local_calls_in_flight", {})
        if slots is not None and mine is not None:
            # The scraped queue is a scrape interval old; this router's own count is not.
            queue = max(queue, mine - slots)
        self.server_queue = queue
        # The queue is judged against the slots the server says it has; the planning keeps
        # the slots inferred from the waits (a server slows as it batches: its declared slots
        # overstate what it carries at the base service times).
        k = max(1, int(round(slots))) if slots is not None and slots >= 1 else (
            max(1, int(round(self.slots))) if self.slots else None)
        planned = self.planned_load
        expected = queue_length(k, planned) if k is not None and planned is not None else 0.0
        kv = values.get("local_server_kv_cache_usage_ratio", {})
        preempting = values.get("local_server_preemptions_per_second", {})
        full = (queue >= 1.0 + 0.25 * (k or 0) and queue > s.server_queue_margin * expected
                or kv is not None and kv >= s.kv_cache_full and queue >= 1.0
                or preempting is not None and preempting >= s.preemptions_full)
        self.server_full = full
        if full and planned is not None and planned > 0:
            cut = s.capacity_cut * planned
            self.server_capacity = max(0.5, cut if self.server_capacity is None else min(self.server_capacity, cut))
        elif not full and self.server_capacity is not None and queue < 1.0:
            wanted = self.wanted_load
            if wanted is not None and wanted > self.server_capacity and (planned or 0.0) >= 0.8 * self.server_capacity:
                self.server_capacity *= s.capacity_growth
            elif wanted is not None and wanted <= self.server_capacity:
                self.server_capacity = None  # the load is back under what was seen to queue

    def _detect_track_change(self, track: str, fresh: Mapping[str, Tally]) -> Optional[str]:
        s = self.settings
        interval = _pool(fresh.values())
        if interval.calls < s.min_calls:
            return None
        est = self.pooled(track)
        if est.calls <= 0:
            return None
        rate, observed = est.success_rate, interval.success_rate
        if rate is not None and observed is not None and _departs(observed, interval.calls, rate, s.change_z,
                                                                    s.change_slack):
            return "success"
        # Latency: the interval's calls against what each class's estimate predicts.
        ratio = self._against_estimates(track, fresh, "latency_sum", "mean_latency", "latency_count")
        if ratio and _beyond(ratio, s.latency_change, s.latency_dispersion, interval.latency_count, s.change_z):
            return "latency"
        within, observed_within = est.within_rate, interval.within_rate
        if (within is not None and observed_within is not None and interval.successes >= s.min_calls
                and _departs(observed_within, interval.successes, within, s.change_z, s.change_slack)):
            return "latency"
        # Price: cost per call against each class's estimate.
        ratio = self._against_estimates(track, fresh, "cost", "cost_per_call", "calls")
        if ratio and _beyond(ratio, s.cost_change, s.cost_dispersion, interval.calls, s.change_z):
            return "cost"
        return None

    def _against_estimates(self, track: str, fresh: Mapping[str, Tally], total: str, rate: str,
                           per: str) -> Optional[float]:
        """The interval's ``total`` (say its latency_sum) over what each class's estimate of
        ``rate`` (mean_latency) predicts for its ``per`` (latency_count): the track's change,
        free of the interval's mix of classes (None without an estimate to predict from)."""
        expected = sum(getattr(t, per) * (getattr(self.tally(track, c), rate) or 0.0) for c, t in fresh.items())
        return sum(getattr(t, total) for t in fresh.values()) / expected if expected > 0 else None

    def _restart_track(self, track: str, fresh: Mapping[str, Tally], what: str) -> None:
        """Restart a track's tallies from this interval. Classes without calls in it keep
        their shape, rescaled by the pooled change and shrunk to little weight.

        A price change is rescaled as it was detected, against what each class's price
        predicts for its calls: pooled over the classes it is a change of their mix too (long
        queries moving to the API read as a price rise, and every class's price was scaled
        by it). The success and latency changes stay pooled: read against each class's
        estimate too, they measured -0.01% to -0.04% on five seed pairs (inside chance)."""
        state = self.tracks[track]
        interval = _pool(fresh.values())
        est = self.pooled(track)
        price = self._against_estimates(track, fresh, "cost", "cost_per_call", "calls")
        for c in self.classes:
            old = state.tallies.get(c)
            new = fresh[c]
            if old is None:
                continue
            if new.calls >= 1:
                # Quality is not what changed: keep its evidence.
                state.tallies[c] = Tally(quality_sum=old.quality_sum, quality_count=old.quality_count,
                                         useful=old.useful)
                continue
            weight = 2.0 / old.calls if old.calls > 2.0 else 1.0
            shrunk = old.scaled(weight)
            if what == "success" and interval.success_rate is not None and est.success_rate:
                factor = interval.success_rate / est.success_rate
                shrunk.successes = min(shrunk.calls, shrunk.successes * factor)
                shrunk.within = min(shrunk.successes, shrunk.within * factor)
                # A failed call is not billed: the spend goes with the answers. (Kept, a class
                # the API had no call of in the interval its outage showed held its dollars over
                # a few answers, and the API's usual cost per answer, which remembers for an hour,
                # read several times its price: savings all but left the plan, random_107_007.)
                shrunk.cost *= factor
            elif what == "latency" and interval.within_rate is not None and est.within_rate:
                factor = interval.within_rate / est.within_rate
                shrunk.within = min(shrunk.successes, shrunk.within * factor)
                if interval.mean_latency and est.mean_latency:
                    shrunk.latency_sum *= interval.mean_latency / est.mean_latency
            elif what == "cost" and price:
                shrunk.cost *= price
            state.tallies[c] = Tally(shrunk.calls, shrunk.successes, shrunk.timeouts, shrunk.within,
                                     old.useful, old.quality_sum, old.quality_count, shrunk.cost,
                                     shrunk.latency_sum, shrunk.latency_count)

    def _quality_changed(self, state: TrackState, query_class: str, old: Tally, new: Tally) -> bool:
        """A CUSUM on the useful rate of one track and class: a change once the
        evidence since it started departing is conclusive, however few answers per interval."""
        s = self.settings
        expected = old.useful_rate
        if expected is None or new.quality_count <= 0:
            return False
        p0 = min(max(expected, 0.01), 0.99)
        up, down = state.quality_cusum.get(query_class, (0.0, 0.0))
        # A shift past the ends of 0..1 is no alternative: that side is not tested.
        p_up, p_down = min(0.99, p0 + s.quality_shift), max(0.01, p0 - s.quality_shift)
        up = max(0.0, up + _llr(new.useful, new.quality_count, p0, p_up)) if p_up - p0 >= 0.02 else 0.0
        down = max(0.0, down + _llr(new.useful, new.quality_count, p0, p_down)) if p0 - p_down >= 0.02 else 0.0
        if up > s.quality_alarm or down > s.quality_alarm:
            state.quality_cusum[query_class] = (0.0, 0.0)
            return True
        state.quality_cusum[query_class] = (up, down)
        return False

    def _correct_spend(self, spend: Optional[float]) -> None:
        planned = self.planned_spend
        if spend is None or planned is None or planned <= 0 or spend <= 0:
            return
        ratio = min(2.0, max(0.5, spend / planned))
        self.spend_bias += self.settings.spend_learning_rate * (ratio - self.spend_bias)

    def _infer_slots(self, load: float, waiting: float) -> None:
        if load < 0.2 or waiting < -0.1 * load:
            return  # much less "waiting" than none: the base service times are off, and it says nothing
        if waiting <= 0.1 * load:
            # Carried with little waiting: at least the slots that allows (leniently: an
            # interval's mean wait is noisy).
            self._slots_seen_free = max(self._slots_seen_free, slots_for(load, 0.3 * load))
            if self.slots is not None and self.slots < self._slots_seen_free:
                self.slots = float(self._slots_seen_free)
            return
        if waiting >= load and self._slots_seen_free:
            # More calls waiting than served: the slots "seen free" came from an interval whose
            # base service times were off (a first interval already queueing reads its waits
            # as service: random_97_010, 13 "free" slots of 8, after which real queues read
            # as a slower model and the plan swung between all local and all API).
            self._slots_seen_free = min(self._slots_seen_free, slots_for(load, waiting))
        k = max(slots_for(load, waiting), self._slots_seen_free)
        if self.slots is None:
            self.slots = float(k)
        else:  # waiting is strong evidence of fewer slots; its absence weak evidence of more
            weight = 0.5 if k < self.slots else 0.2
            self.slots += weight * (k - self.slots)

    def _never_queued_below(self, load: float) -> bool:
        """Are the slots short of ``load`` a guess nothing has tested: local never showed
        queueing (no capacity seen), and memory, where known, holds more than them?"""
        slots = self.slots
        return (slots is not None and load > slots and self.capacity is None
                and (self.memory_slots is None or self.memory_slots > slots))

    @property
    def _known_slots(self) -> Optional[float]:
        """The slots local was seen to carry load with, else the inferred ones (None: neither)."""
        return self._slots_seen_free or self.slots

    def _cut_capacity(self, cut: float) -> None:
        """Local queued (or turned calls away) carrying more than ``cut`` Erlangs: the capacity is
        at most that, and the back-off after a queue starts again (:attr:`cycles_since_queued`)."""
        self.capacity = max(0.5, cut if self.capacity is None else min(self.capacity, cut))
        self.cycles_since_queued = 0

    def _queues_little(self, load: float) -> bool:
        """Would ``load`` Erlangs queue little on local: under half the capacity seen, or a wait
        within the uncongested inflation (Erlang C) at the slots it has been seen to carry load
        with? (Not at slots tried higher since: those are a guess the waits may refute.)"""
        if self.capacity is not None and load < 0.5 * self.capacity:
            return True
        known = self._known_slots
        if known is None:
            return False
        k = max(1, int(round(known)))
        return load < k and 1.0 + erlang_c(k, load) / (k - load) < self.settings.uncongested_inflation

    def _fit_memory_extremes(self, values: SignalValues) -> None:
        """Fold in the interval's fullest and emptiest memory readings, each at the local calls
        counted with it (``*_max``, ``*_min``), beside the reading of the moment: an interval whose
        memory went over its limit and back (an immediate override moved load off local) shows
        it, and the line has both ends of the interval's load. Not at a count beyond the slots."""
        for end in ("max", "min"):
            calls = values.get(f"memory_reading_local_calls_{end}", {})
            if calls is None or self._beyond_slots(calls):
                continue
            memory = {name: v for name in MEMORY_SIGNALS if (v := values.get(f"{name}_{end}", {})) is not None}
            if memory:
                self._fit_memory(calls, memory)

    def _fit_memory(self, load: float, memory: Mapping[str, float]) -> None:
        """Fold in one reading of each memory (share of its limit) at ``load`` busy slots; the
        slots at which the first of them reaches its limit (None while no line has a slope)."""
        for name, ratio in memory.items():
            self._memory_lines[name].add(load, ratio)
        limits = []
        for name, line in self._memory_lines.items():
            fit = line.fit()
            if fit is not None:
                if fit[1] > 1e-6:
                    limits.append(max(0.0, (1.0 - fit[0]) / fit[1]))
            elif load > 0 and memory.get(name, 0.0) >= 1.0 and (slope := line.slope_through_origin()):
                # Too few points for a line yet, and this memory is over its limit now: all of
                # it put down to local load (fewer slots than it holds) until the line says.
                self._memory_guesses[name] = 1.0 / slope
                limits.append(1.0 / slope)
            elif name in self._memory_guesses:
                # Under its limit now, and still no line: the guess stands. Forgotten at the
                # next reading under the limit, the plan sent local its full load again and
                # memory went back over (random_118_009, random_118_013: over its limit half and
                # a third of their first three minutes).
                limits.append(self._memory_guesses[name])
        self.memory_slots = min(limits, default=None)

    def api_cost_per_query(self) -> Optional[float]:
        """What a query costs on the API at the prices of now, over the classes' mix (per
        successful call: failures are not billed); None before the API has answered."""
        known = {}
        for c in self.classes:
            api = self.tally("api", c)
            if api.successes > 0:
                known[c] = api.cost / api.successes
        total = sum(self.arrivals.get(c, 0.0) for c in self.classes)
        if total <= 0 or not known:
            return None
        mean_known = sum(known.values()) / len(known)
        return sum(self.arrivals.get(c, 0.0) * known.get(c, mean_known) for c in self.classes) / total

    def _update_usual_api_cost(self, queries: float) -> None:
        now = self.api_cost_per_query()
        if now is None or queries <= 0:
            return
        d, sums = self.settings.price_memory, self._api_cost_sums
        sums[0] = d * sums[0] + now * queries
        sums[1] = d * sums[1] + queries
        self.usual_api_cost = sums[0] / sums[1]

    def _update_battery(self, values: SignalValues, busy: Optional[float]) -> None:
        """The battery's charge above its threshold and its drain against local load.

        The drain is read from the OS's estimate of the time left
        (``battery_seconds_left``: the charge over the power drawn at the reading),
        paired with the local calls being served at that moment. Until the line has
        points enough (and a slope), the whole drain is put down to local load: more
        than its share, so that the battery is spared rather than spent.
        """
        ratio = values.get("battery_ratio", {})
        if values.get("battery_discharging", {}) != 1 or ratio is None:
            self.battery_room = None
            return
        threshold = values.get("battery_threshold_ratio", {})
        self.battery_room = ratio - threshold if threshold is not None else None
        left = values.get("battery_seconds_left", {})
        if left is None or not left > 0 or busy is None:
            return
        line = self._battery_line
        fit = line.add(busy, ratio * 3600.0 / left)
        if fit is not None and fit[0] >= 0.0 and fit[1] > 1e-9:
            self.battery_drain = fit
        elif (slope := line.slope_through_origin()) is not None:
            self.battery_drain = (0.0, slope)

    def _update_local_capacity(self, fresh: Mapping[str, Tally], interval_seconds: float,
                               memory: Mapping[str, float], busy_now: Optional[float] = None,
                               queued: bool = False) -> None:
        s = self.settings
        base = self.base_service
        offered = 0.0  # Erlangs at base service times
        in_system = 0.0  # Erlangs actually observed (Little's law: latency x calls / interval)
        for c, t in fresh.items():
            mean = t.mean_latency
            if mean is None:
                continue
            if c not in base:
                base[c] = mean
            offered += t.latency_count * base[c] / interval_seconds
            in_system += t.latency_sum / interval_seconds
        if memory and busy_now is not None:
            self._fit_memory(busy_now, memory)  # an idle track's reading is a point too (the intercept)
        if offered <= 0:
            return
        if memory and busy_now is None:
            self._fit_memory(offered, memory)  # no count of the moment: the interval's mean load
        inflation = in_system / offered
        calls = sum(t.latency_count for t in fresh.values())
        self.local_wait = max(0.0, in_system - offered) * interval_seconds / calls if calls > 0 else 0.0
        pooled = _pool(fresh.values())
        failed = 1.0 - (pooled.success_rate if pooled.success_rate is not None else 1.0)
        usual = self._usual_local_failures
        self._usual_local_failures = failed if usual is None else 0.8 * usual + 0.2 * failed
        # A server with a bounded queue turns calls away at once when full (Ollama's
        # OLLAMA_MAX_QUEUE): a sudden share of failures under load is queueing too, and
        # those instant failures would otherwise make the latency look better than ever.
        rejecting = failed > s.rejected_share and (usual is None or failed > 3.0 * usual)
        if rejecting and self.slots is not None:
            # A full server turns away at most the calls that find every slot busy (Erlang B,
            # none waiting; with a queue fewer still): failures far beyond that share, at a
            # load the slots carry, are the model's errors, not its capacity. (random_90_002:
            # 59% of the calls failing at 2.6 Erlangs on 5 slots cut the capacity to 0.5.)
            rejecting = failed <= _turned_away_at_most(self.slots, offered)
        elif rejecting and self._slots_seen_free:
            # No slots inferred (local never queued): the slots it was seen to carry load with
            # stand for them, for the calls that failed fast. A call that timed out waited, and
            # that is a queue whatever the slots say. (random_130_014: 37% of the calls erring on a
            # 64-slot server a third loaded cut its capacity to 0.8 busy slots, and a budget kept
            # by local load was over through the errors' 17 minutes.)
            timed_out = pooled.timeouts / pooled.calls if pooled.calls > 0 else 0.0
            rejecting = (timed_out > s.rejected_share
                         or failed - timed_out <= _turned_away_at_most(self._slots_seen_free, offered))
        if rejecting and self.capacity is None or rejecting and offered >= 0.5 * (self.capacity or 0.0):
            self._cut_capacity(s.capacity_cut * offered * (1.0 - failed))
            return
        if failed > 1.0 - s.base_min_success:
            return  # latency of a failing interval says nothing about service times
        # Slow at a load that queues little: the model got slower (throttling), not full. Its
        # waits then say nothing about the slots (they would read as very few).
        # (Not while the routers count more local calls in flight than the slots: that is a queue.)
        # Nor while the calls held, on average, were at least the slots it has been seen to
        # carry: more calls than slots is a queue, whatever the load finished suggests.
        known = self._known_slots
        queued = queued or (known is not None and in_system >= known)
        slower = inflation >= s.congested_inflation and self._queues_little(offered) and not queued
        if not slower:
            self._infer_slots(offered, in_system - offered)
        if inflation >= s.congested_inflation:
            if slower:
                for c, t in fresh.items():
                    if t.mean_latency is not None:
                        base[c] = t.mean_latency
            elif calls >= s.min_calls:
                # Unknown until the track first shows queueing: then what it carried. (Not off
                # an interval of a few calls: at 1 s cycles a queue lets few finish, and their
                # load read local's capacity as 1.2 busy slots of 16 in the demo.)
                self._cut_capacity(s.capacity_cut * offered)
        else:
            rate = 1.0 if inflation < 1.0 / s.congested_inflation else s.base_learning_rate
            if inflation < s.uncongested_inflation or rate == 1.0:
                for c, t in fresh.items():
                    if t.mean_latency is not None and t.latency_count >= 1:
                        base[c] += rate * (t.mean_latency - base[c])
            wanted = self.wanted_load
            if inflation < s.uncongested_inflation and wanted is not None:  # keeping up; more is wanted?
                if self.capacity is not None and wanted > self.capacity and offered >= 0.8 * self.capacity:
                    self.capacity *= s.capacity_growth
                # The slots inferred from waits are the fewest that explain them: a lower bound.
                # Near the load they allow, with the split wanting more, try more. Where local
                # has never queued (no capacity seen) and memory holds more, whenever the split
                # wants more than them: a budget that more local load would keep (random_101_013:
                # 8 slots inferred of 64, the long queries left on the API through a x3 burst,
                # the budget over for 9 minutes; the load offered never came near the 8).
                if self.slots is not None and wanted > 1.05 * offered and (
                        offered >= 0.5 * self.slots or self._never_queued_below(wanted)):
                    self.slots = min(512.0, self.slots * s.capacity_growth)


def _turned_away_at_most(slots: float, load: float) -> float:
    """The share of calls a full server of ``slots`` could turn away at ``load`` Erlangs, with room
    for noise: twice those that find every slot busy (Erlang B), and 5 points more."""
    return 2.0 * erlang_b(max(1, int(round(slots))), load) + 0.05


def erlang_b(slots: int, load: float) -> float:
    """The chance a call finds every slot busy with no room to wait (Erlang B): ``slots`` servers,
    ``load`` Erlangs offered."""
    if load <= 0:
        return 0.0
    b = 1.0
    for k in range(1, slots + 1):  # by its recursion, stable for any size
        b = load * b / (k + load * b)
    return b


def erlang_c(slots: int, load: float) -> float:
    """The chance a call waits for a slot (Erlang C): ``slots`` servers, ``load`` Erlangs offered."""
    if load <= 0:
        return 0.0
    if load >= slots:
        return 1.0
    b = erlang_b(slots, load)
    return slots * b / (slots - load * (1.0 - b))


def queue_length(slots: int, load: float) -> float:
    """Mean number of calls waiting for a slot (M/M/c): infinite at or beyond the slots."""
    if load >= slots:
        return math.inf
    return erlang_c(slots, load) * load / (slots - load)


def wait_seconds(slots: int, load: float, service: float) -> float:
    """Mean wait for a slot, for calls of mean ``service`` seconds."""
    if load >= slots:
        return math.inf
    return erlang_c(slots, load) * service / (slots - load)


def slots_for(load: float, waiting: float, most: int = 512) -> int:
    """The fewest slots at which ``load`` Erlangs would leave at most ``waiting`` calls waiting."""
    k = max(1, math.floor(load) + 1)
    while k < most and queue_length(k, load) > waiting:
        k += 1
    return k


#: Intervals of evidence before the memory (and battery) line is trusted: three points, one
#: more than a line needs (five waited two cycles longer with memory over its limit).
MEMORY_FIT_POINTS = 3
#: The memory signals fitted against local load, each a share of its limit.
MEMORY_SIGNALS = ("memory_used_ratio", "gpu_memory_used_ratio")


class _DecayedLine:
    """``y = a + b x`` fitted by least squares over decayed sums of (w, x, y, xx, xy): each
    point added weighs 1, the one before ``decay``, and so on."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.sums = [0.0, 0.0, 0.0, 0.0, 0.0]
        self.points = 0

    def add(self, x: float, y: float) -> Optional[Tuple[float, float]]:
        """Fold a point in; the fitted (a, b) once there are ``MEMORY_FIT_POINTS`` points, else None."""
        for i, v in enumerate((1.0, x, y, x * x, x * y)):
            self.sums[i] = self.decay * self.sums[i] + v
        self.points += 1
        return self.fit()

    def fit(self) -> Optional[Tuple[float, float]]:
        """The fitted (a, b) once there are ``MEMORY_FIT_POINTS`` points, else None."""
        return _fit_line(self.sums) if self.points >= MEMORY_FIT_POINTS else None

    def slope_through_origin(self) -> Optional[float]:
        """``b`` of ``y = b x`` (all of ``y`` put down to ``x``); None while every ``x`` was 0."""
        return self.sums[2] / self.sums[1] if self.sums[1] > 1e-9 else None


def _fit_line(sums: Iterable[float]) -> Optional[Tuple[float, float]]:
    w, x, y, xx, xy = sums
    det = w * xx - x * x
    if w <= 0 or det <= 1e-9 * max(1.0, w * xx):
        return None
    slope = (w * xy - x * y) / det
    return (y - slope * x) / w, slope


__all__ = ["EstimatorSettings", "Estimator", "INTERVAL_SIGNALS", "Tally", "erlang_b", "erlang_c", "queue_length",
           "slots_for", "wait_seconds"]
