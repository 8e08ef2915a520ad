"""Simulated models: a local model on this machine and a remote API model.

Both are passive: the event loop (``loop.py``) submits calls at virtual
times and the models say when each call will end and how. Randomness comes
from per-request draws (:class:`Draws`) made by the workload generator from
one seeded ``random.Random``, so every policy faces the very same queries,
noise and failures ("common random numbers"): differences between policies
are the policies', not luck.

``LocalModelSim`` -- prefill and decode speed; a concurrency limit with a
FIFO queue of at most ``max_queue`` waiting calls (more are turned away at
once); batched decoding slows each running request a little per extra
one (``contention``); thermal throttling: a heat level follows utilisation
(heating and cooling time constants) and above ``threshold`` the model
slows by up to ``max_throttle``; memory, GPU memory and CPU grow with the
running requests; random errors; unavailable when switched off or when the
machine suspends it (critical battery).

``ApiModelSim`` -- network round trip, time to first token, decode speed,
lognormal jitter with a Pareto tail; a requests-per-minute rate limit
(429 above it); outages that fail fast (``error``) or hang until the
caller's timeout (``hang``); price per input and output token with a
multiplier; random server errors.

Quality per query class and track, lowered for more complex queries
(``complexity_penalty``), with per-request noise.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from ..vocabulary import RATE_LIMITED

INF = math.inf


class Draws:
    """The random numbers of one request, drawn once by the workload."""

    __slots__ = ("q_local", "q_api", "err_local", "err_api", "lat_api", "tail_u", "tail_x")

    def __init__(self, q_local: float, q_api: float, err_local: float, err_api: float,
                 lat_api: float, tail_u: float, tail_x: float) -> None:
        self.q_local = q_local  # N(0,1): quality noise on each track
        self.q_api = q_api
        self.err_local = err_local  # U(0,1): random error when below the error rate
        self.err_api = err_api
        self.lat_api = lat_api  # N(0,1): API latency jitter
        self.tail_u = tail_u  # U(0,1): in the heavy tail when below tail_probability
        self.tail_x = tail_x  # U(0,1): how far into the tail


class Call:
    """One call of one request on one track, and what it turned out to be."""

    __slots__ = ("request", "track", "record_id", "start", "deadline", "tokens_in", "tokens_out", "quality",
                 "fail", "error_type", "service_start", "first_token", "end", "done", "queued",
                 "price_in", "price_out", "outcome", "cost", "tokens_in_done", "tokens_out_done")

    def __init__(self, request: Any, track: str, record_id: str, start: float, deadline: float,
                 tokens_in: int, tokens_out: int) -> None:
        self.request = request
        self.track = track
        self.record_id = record_id
        self.start = start
        self.deadline = deadline
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.quality = 0.0
        self.fail = False
        self.error_type: Optional[str] = None
        self.service_start: Optional[float] = None
        self.first_token = INF
        self.end = INF
        self.done = False
        self.queued = False
        self.price_in = 0.0  # dollars per token, fixed when the call starts
        self.price_out = 0.0
        self.outcome = ""
        self.cost = 0.0
        self.tokens_in_done = 0
        self.tokens_out_done = 0

    def progress(self, t: float) -> Tuple[int, int]:
        """Tokens processed by time ``t``: input once the first token is out, output as decoded."""
        if t < self.first_token:
            return 0, 0
        if self.fail or self.end <= self.first_token:
            return self.tokens_in, 0
        if t >= self.end:
            return self.tokens_in, self.tokens_out
        return self.tokens_in, int(self.tokens_out * (t - self.first_token) / (self.end - self.first_token))

    def settle(self, t: float, outcome: str) -> None:
        """Close the call at ``t``: tokens and cost incurred so far."""
        self.done = True
        self.outcome = outcome
        tin, tout = self.progress(t)
        if outcome == "error" and self.track == "api":
            tin, tout = 0, 0  # providers do not bill failed requests
        self.tokens_in_done, self.tokens_out_done = tin, tout
        self.cost = tin * self.price_in + tout * self.price_out


def quality_mean(params: Dict[str, Any], query_class: str, complexity: float) -> float:
    """Expected answer quality of a track for a class at a complexity (0.5 = the table's value)."""
    q = params["quality"].get(query_class, 0.0) - params["complexity_penalty"] * (complexity - 0.5)
    return 0.0 if q < 0.0 else 1.0 if q > 1.0 else q


def _quality(params: Dict[str, Any], query_class: str, complexity: float, noise: float) -> float:
    q = quality_mean(params, query_class, complexity) + params["quality_noise"] * noise
    return 0.0 if q < 0.0 else 1.0 if q > 1.0 else q


class LocalModelSim:
    """A local model server: slots, a FIFO queue, heat, memory.

    ``params`` is the scenario's live ``local`` dict; timeline changes to it
    take effect for calls that start service afterwards.
    """

    track = "local"

    def __init__(self, params: Dict[str, Any]) -> None:
        self.p = params
        self.active = 0
        self.queue: Deque[Call] = deque()
        self.queued = 0  # live calls waiting (timed-out ones leave the deque lazily)
        self.heat = 0.0
        self.busy_seconds = 0.0  # integral of utilisation over time
        self.suspended = False  # set by the machine on a critical battery
        self._t = 0.0
        self.started = 0
        self.service_seconds = 0.0  # sum of planned service times (for mean service time)

    # -------------------------------------------------------------- state

    @property
    def available(self) -> bool:
        return bool(self.p["available"]) and not self.suspended

    def utilisation(self) -> float:
        u = self.active / self.p["concurrency"]
        return 1.0 if u > 1.0 else u

    def touch(self, t: float) -> None:
        """Advance heat and busy time to ``t`` (utilisation is constant since the last change)."""
        dt = t - self._t
        if dt <= 0:
            return
        u = self.utilisation()
        self.busy_seconds += u * dt
        thermal = self.p["thermal"]
        tau = thermal["heat_time"] if u > self.heat else thermal["cool_time"]
        self.heat += (u - self.heat) * (1.0 - math.exp(-dt / tau)) if tau > 0 else (u - self.heat)
        self._t = t

    def thermal_factor(self) -> float:
        """Speed left after throttling, 1.0 = none."""
        th = self.p["thermal"]
        threshold = th["threshold"]
        if self.heat <= threshold:
            return 1.0
        excess = (self.heat - threshold) / (1.0 - threshold) if threshold < 1.0 else 1.0
        return 1.0 - th["max_throttle"] * (excess if excess < 1.0 else 1.0)

    def speed(self) -> float:
        """Speed of a call starting service now, relative to the nominal speed."""
        p = self.p
        return p["speed_factor"] * self.thermal_factor() / (1.0 + p["contention"] * self.active)

    def service_time(self, tokens_in: int, tokens_out: int, speed: Optional[float] = None) -> float:
        p = self.p
        s = self.speed() if speed is None else speed
        return p["overhead"] + tokens_in / (p["prefill_tokens_per_second"] * s) + \
            tokens_out / (p["decode_tokens_per_second"] * s)

    def expected_wait(self) -> float:
        """Mean wait for a slot of a call submitted now (queue ahead / slots x mean service)."""
        p = self.p
        ahead = self.active + self.queued - p["concurrency"] + 1
        if ahead <= 0:
            return 0.0
        mean = self.service_seconds / self.started if self.started else 1.0
        return ahead * mean / p["concurrency"]

    # -------------------------------------------------------------- calls

    def submit(self, call: Call, t: float, draws: Draws, query_class: str, complexity: float) -> str:
        """``started`` (``call.end`` is set), ``queued`` or ``rejected`` (fails at ``call.end``)."""
        self.touch(t)
        call.quality = _quality(self.p, query_class, complexity, draws.q_local)
        if not self.available:
            call.fail = True
            call.error_type = "unavailable"
            call.first_token = call.end = t + 0.005
            return "rejected"
        call.fail = draws.err_local < self.p["error_rate"]
        if call.fail:
            call.error_type = "model_error"
        if self.active < self.p["concurrency"]:
            self._start(call, t)
            return "started"
        if self.queued >= self.p["max_queue"]:
            # A full queue turns requests away at once (Ollama's OLLAMA_MAX_QUEUE, HTTP 503).
            call.fail = True
            call.error_type = "queue_full"
            call.first_token = call.end = t + 0.005
            return "rejected"
        self.queue.append(call)
        self.queued += 1
        call.queued = True
        return "queued"

    def _start(self, call: Call, t: float) -> None:
        p = self.p
        s = self.speed()
        prefill = p["overhead"] + call.tokens_in / (p["prefill_tokens_per_second"] * s)
        decode = call.tokens_out / (p["decode_tokens_per_second"] * s)
        call.service_start = t
        call.first_token = t + prefill
        call.end = call.first_token if call.fail else call.first_token + decode  # errors surface at decode start
        self.active += 1
        self.started += 1
        self.service_seconds += prefill + decode

    def release(self, call: Call, t: float) -> List[Call]:
        """``call`` ended (done, failed, timed out or cancelled); returns the queued calls started now."""
        self.touch(t)
        if call.service_start is None:
            if call.queued:  # left the queue before service
                call.queued = False
                self.queued -= 1
            return []
        self.active -= 1
        return self.drain(t)

    def drain(self, t: float) -> List[Call]:
        """Start queued calls while slots are free (also after a concurrency change)."""
        started: List[Call] = []
        queue = self.queue
        limit = self.p["concurrency"]
        while queue and self.active < limit:
            call = queue.popleft()
            if call.done or not call.queued:
                continue
            call.queued = False
            self.queued -= 1
            if not self.available:
                call.fail = True
                call.error_type = "unavailable"
                call.service_start = None
                call.first_token = call.end = t + 0.005
                started.append(call)
                continue
            self._start(call, t)
            started.append(call)
        return started

    def memory_mb(self) -> float:
        return self.p["base_memory_mb"] + self.p["memory_per_request_mb"] * self.active

    def gpu_memory_mb(self) -> float:
        return self.p["gpu_base_memory_mb"] + self.p["gpu_memory_per_request_mb"] * self.active


class ApiModelSim:
    """A hosted model behind the network. ``params`` is the scenario's live ``api`` dict."""

    track = "api"

    def __init__(self, params: Dict[str, Any]) -> None:
        self.p = params
        self._accepted: Deque[float] = deque()  # accept times within the last minute (rate limit)

    def price_per_token(self) -> Tuple[float, float]:
        p = self.p
        m = p["price_multiplier"] / 1e6
        return p["price"]["input_per_million"] * m, p["price"]["output_per_million"] * m

    def requests_last_minute(self, t: float) -> int:
        window = self._accepted
        while window and window[0] <= t - 60.0:
            window.popleft()
        return len(window)

    def base_latency(self, tokens_in: int, tokens_out: int) -> Tuple[float, float]:
        """(time to first token, total) without jitter, for the current parameters."""
        p = self.p
        first = (p["rtt"] + p["time_to_first_token"] + tokens_in / p["prefill_tokens_per_second"])
        total = first + tokens_out / p["decode_tokens_per_second"]
        m = p["latency_multiplier"]
        return first * m, total * m

    def submit(self, call: Call, t: float, draws: Draws, query_class: str, complexity: float) -> str:
        """``started`` (``call.end`` set, possibly ``inf`` for a hang) or ``rejected`` (fails fast)."""
        p = self.p
        call.quality = _quality(p, query_class, complexity, draws.q_api)
        call.price_in, call.price_out = self.price_per_token()
        call.service_start = t
        outage = p["outage"]
        if outage == "error":
            call.fail = True
            call.error_type = "unavailable"  # HTTP 503
            call.first_token = call.end = t + p["rtt"] + 0.02
            return "rejected"
        if outage == "hang":
            return "started"  # never answers; the caller's timeout ends it
        limit = p["rate_limit_per_minute"]
        if limit is not None:
            if self.requests_last_minute(t) >= limit:
                call.fail = True
                call.error_type = RATE_LIMITED  # HTTP 429
                call.first_token = call.end = t + p["rtt"]
                return "rejected"
            self._accepted.append(t)
        first, total = self.base_latency(call.tokens_in, call.tokens_out)
        sigma = p["latency_sigma"]
        jitter = math.exp(sigma * draws.lat_api - 0.5 * sigma * sigma)
        if draws.tail_u < p["tail_probability"]:
            jitter *= (1.0 - draws.tail_x) ** (-1.0 / p["tail_alpha"])  # Pareto, >= 1
        call.first_token = t + first * jitter
        call.end = t + total * jitter
        if draws.err_api < p["error_rate"]:
            call.fail = True
            call.error_type = "server_error"  # HTTP 500
            call.end = call.first_token
        return "started"


__all__ = ["ApiModelSim", "Call", "Draws", "LocalModelSim", "quality_mean"]
