#!/usr/bin/env python3
"""dualtrack inside LiteLLM: what it adds to a ``litellm.Router`` call.

Measures, in one run and on one machine, the time per call of:

* ``bare``: ``litellm.completion`` of a mock deployment (``mock_response``),
  no Router: a call without routing;
* ``router``: ``Router.completion`` on a model group with a local and an API
  deployment (both mock), LiteLLM's default simple-shuffle: the baseline;
* ``noop_logger``: that Router with an empty ``CustomLogger`` registered:
  what being one of LiteLLM's callbacks costs by itself, before any work;
* ``dualtrack``: the Router after ``instrument(router, optimizer)``:
  dualtrack's routing strategy (recommendation, plan, track, cooldowns,
  weighted pick, timeout) and its recorder (start and completion of every
  call, tokens, cost);
* ``dualtrack_record_only``: ``instrument(..., routing=None)``: the recorder alone.

LiteLLM's routing overhead is ``router - bare``; dualtrack's is
``dualtrack - router``; the target (issue 12) is dualtrack's at most 5% of
LiteLLM's. Two clocks: the wall clock, and process CPU time (every thread,
LiteLLM's logging threads included), which a machine shared with other work
disturbs far less. Variants run in rounds, one short batch each, in rotating
order; each figure is the median over rounds of the per-round difference
(paired, so load that changes between rounds cancels out).

Beside the end-to-end difference the benchmark reports the CPU time spent
inside dualtrack's own hooks (the strategy's pick, the recorder's start and
completion), measured with the thread CPU clock around each hook: dualtrack's
own code, without what LiteLLM does for any callback.

Last, a replay: one routed sync call's real hook arguments are captured and
the three hooks (the strategy's pick, the recorder's start and completion)
called directly, in a tight loop with fresh call ids. It measures dualtrack's
own code without LiteLLM around it: steadier than the in-hook clock, whose
figure also moves with what LiteLLM's code leaves in the caches (the hooks
cost 2.5-3 times as much inside LiteLLM), so a change to dualtrack's request
path shows here first.

A call's logging runs after it returns: a sync call's on LiteLLM's logging
threads, an async call's as tasks on the event loop (LiteLLM's
``LoggingWorker``). So every batch, of every variant, ends inside the timed
region by waiting until LiteLLM's logging backlog is empty (``settle``): the
thread pool has nothing pending and the loop nothing but the worker's own
loop. Without it a batch's logging spills into the next variant's batch, and
a variant that waits for its own records (dualtrack's ``drain``) pays for the
work the others leave behind: before 6 December it read dualtrack's sync
calls as 44% dearer than the plain Router, and on a loaded machine 17-23%
cheaper. LiteLLM's callbacks are process-wide: each callback is registered
only while its variant runs (``litellm.logging_callback_manager``).

    python benchmarks/litellm_overhead.py                 # the documented figures (about 10 minutes on 2 cores)
    python benchmarks/litellm_overhead.py --quick         # a smoke test, rough numbers
    python benchmarks/litellm_overhead.py --json out.json

No network: ``LITELLM_LOCAL_MODEL_COST_MAP`` is set before LiteLLM is
imported, so it reads its bundled price map instead of fetching one.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import os
import statistics
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from typing import Any, Callable, Dict, List, Optional, Sequence

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: no download

import litellm  # noqa: E402
from _common import announce, write_json  # noqa: E402
from litellm import Router  # noqa: E402
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402
from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER  # noqa: E402
from litellm.litellm_core_utils.thread_pool_executor import executor  # noqa: E402

from dualtrack import (  # noqa: E402
    DualTrackOptimizer,
    OptimizationConfig,
    Preferences,
    ResourceConstraints,
    Routing,
)
from dualtrack.integrations.litellm import (  # noqa: E402
    DualTrackLiteLLM,
    DualTrackRecorder,
    DualTrackStrategy,
    instrument,
)
from dualtrack.preferences import write_preferences  # noqa: E402

TARGET_SHARE = 0.05  # dualtrack's overhead / LiteLLM's routing overhead
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
MODEL_LIST = [
    {"model_name": "chat", "litellm_params": {"model": "ollama/llama3.1:8b", "mock_response": "Paris."}},
    {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-bench",
                                              "mock_response": "Paris."}},
]
LABELS = {
    "bare": "litellm.completion, mock (no Router)",
    "router": "Router.completion (baseline)",
    "noop_logger": "Router + an empty CustomLogger",
    "dualtrack": "Router + dualtrack (routing + recording)",
    "dualtrack_record_only": "Router + dualtrack recorder only",
}
ADDED = ("noop_logger", "dualtrack", "dualtrack_record_only")
HOOKS = ((DualTrackStrategy, "get_available_deployment"), (DualTrackStrategy, "async_get_available_deployment"),
         (DualTrackRecorder, "log_pre_api_call"), (DualTrackRecorder, "log_success_event"),
         (DualTrackRecorder, "async_log_success_event"))

Batch = Callable[[int], None]


class HookClock:
    """Thread CPU time spent inside dualtrack's hooks, per variant (class-level wrappers)."""

    def __init__(self) -> None:
        self.ns: Dict[str, int] = {}
        self.variant: Optional[str] = None
        self._lock = threading.Lock()
        for cls, name in HOOKS:
            setattr(cls, name, self._wrap(getattr(cls, name)))

    def _add(self, ns: int) -> None:
        if self.variant is not None:
            with self._lock:
                self.ns[self.variant] = self.ns.get(self.variant, 0) + ns

    def _wrap(self, method: Any) -> Any:
        if asyncio.iscoroutinefunction(method):
            @functools.wraps(method)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t0 = time.thread_time_ns()
                try:
                    return await method(*args, **kwargs)
                finally:
                    self._add(time.thread_time_ns() - t0)
            return timed_async

        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time_ns()
            try:
                return method(*args, **kwargs)
            finally:
                self._add(time.thread_time_ns() - t0)
        return timed


SETTLE_SECONDS = 30.0


def _logging_backlog() -> int:
    """Tasks queued or running on LiteLLM's logging thread pool (its private counters)."""
    return executor._max_pending_tasks - executor._pending_slots._value


def settle(timeout: float = SETTLE_SECONDS) -> None:
    """Wait until LiteLLM's logging threads have nothing left to do."""
    deadline = time.monotonic() + timeout
    while _logging_backlog() > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"LiteLLM's logging threads still busy after {timeout:.0f} s")
        time.sleep(0.0001)


async def settle_loop(timeout: float = SETTLE_SECONDS) -> None:
    """Wait until the event loop runs nothing but this task and LiteLLM's logging worker loop."""
    deadline = time.monotonic() + timeout
    worker = getattr(GLOBAL_LOGGING_WORKER, "_worker_task", None)
    while True:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t is not worker]
        queue = getattr(GLOBAL_LOGGING_WORKER, "_queue", None)
        if not others and (queue is None or queue.empty()):
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"LiteLLM's logging tasks still running after {timeout:.0f} s")
        if others:
            await asyncio.wait(others, timeout=left)
        else:
            await asyncio.sleep(0)


class NoopLogger(CustomLogger):
    """A callback that does nothing."""

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        pass

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        pass

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        pass


# The concurrency limit of the benchmark's optimizers. A sync call stays in dualtrack's in-flight count
# until LiteLLM's logging threads record it, and mock calls come faster than those threads record them:
# at the default limit (4) the concurrency override would fire and send nearly every call to the API
# (78% of them, measured), whose mock path costs LiteLLM less than Ollama's, and the comparison with
# the plain Router's half-and-half would measure the deployments, not dualtrack.
BENCH_MAX_CONCURRENT = 1_000_000


def make_optimizer(folder: str) -> DualTrackOptimizer:
    """An optimizer splitting traffic half and half (from a file, so no adaptation runs meanwhile)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "preferences.json")
    now = time.time()
    write_preferences(path, Preferences(generated_at=now, valid_until=now + 86400, strategy="bench",
                                        source="static", routing=Routing(local_bias=0.5, parallel_threshold=1.01)))
    return DualTrackOptimizer(OptimizationConfig(
        preferences_file=path, enable_resource_monitoring=False,
        constraints=ResourceConstraints(max_concurrent_requests=BENCH_MAX_CONCURRENT)))


class Variants:
    """The contenders, each a function running ``n`` calls."""

    def __init__(self, folder: str, mode: str, clock: HookClock) -> None:
        self.loop = asyncio.new_event_loop() if mode == "async" else None
        self.clock = clock
        routed, recorded = Router(model_list=MODEL_LIST), Router(model_list=MODEL_LIST)
        self.handles: Dict[str, DualTrackLiteLLM] = {
            "dualtrack": instrument(routed, make_optimizer(os.path.join(folder, "a"))),
            "dualtrack_record_only": instrument(recorded, make_optimizer(os.path.join(folder, "b")), routing=None),
        }
        for handle in self.handles.values():  # registered only while their variant runs
            litellm.logging_callback_manager.remove_callback_from_all_lists(handle.recorder)
        self.batches: Dict[str, Batch] = {
            "bare": self._bare,
            "router": self._calls(Router(model_list=MODEL_LIST)),
            "noop_logger": self._registered("noop_logger", self._calls(Router(model_list=MODEL_LIST)), NoopLogger()),
        }
        for name, router in (("dualtrack", routed), ("dualtrack_record_only", recorded)):
            self.batches[name] = self._registered(name, self._calls(router), self.handles[name].recorder,
                                                  self.handles[name])

    def _run(self, make: Callable[[], Any], n: int) -> None:
        if self.loop is None:
            for _ in range(n):
                make()
            settle()
            return

        async def run() -> None:
            for _ in range(n):
                await make()
            await settle_loop()
            settle()
        self.loop.run_until_complete(run())

    def _bare(self, n: int) -> None:
        call = litellm.completion if self.loop is None else litellm.acompletion
        self._run(lambda: call(model="openai/gpt-4o-mini", api_key="sk-bench", messages=MESSAGES,
                               mock_response="Paris."), n)

    def _calls(self, router: Any) -> Batch:
        call = router.completion if self.loop is None else router.acompletion
        return lambda n: self._run(lambda: call(model="chat", messages=MESSAGES), n)

    def _registered(self, name: str, calls: Batch, callback: CustomLogger,
                    handle: Optional[DualTrackLiteLLM] = None) -> Batch:
        def batch(n: int) -> None:
            litellm.logging_callback_manager.add_litellm_callback(callback)
            self.clock.variant = name
            try:
                calls(n)
                if handle is not None:
                    done = handle.drain(30) if self.loop is None else self.loop.run_until_complete(handle.adrain(30))
                    if not done:
                        raise RuntimeError("calls were never recorded")
            finally:
                self.clock.variant = None
                litellm.logging_callback_manager.remove_callback_from_all_lists(callback)
        return batch

    def recorded_calls(self, name: str) -> Dict[str, float]:
        """The variant's calls dualtrack recorded, per track."""
        registry = self.handles[name].optimizer.registry
        return {p: registry.get_sample_value("dualtrack_requests_total",
                                             {"path": p, "query_class": "short", "outcome": "success"}) or 0.0
                for p in ("local", "api")}

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        if self.loop is not None:
            self.loop.close()


def measure(variants: Variants, rounds: int, batch: int) -> Dict[str, Dict[str, List[float]]]:
    """Per round and variant, microseconds per call on each clock; variants in rotating order."""
    names = list(variants.batches)
    for run in variants.batches.values():  # warm-up: clients, caches, label children
        run(batch)
    variants.clock.ns.clear()
    samples: Dict[str, Dict[str, List[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            c0, t0 = time.process_time_ns(), time.perf_counter_ns()
            variants.batches[name](batch)
            t1, c1 = time.perf_counter_ns(), time.process_time_ns()
            samples[name]["wall"].append((t1 - t0) / batch / 1000.0)
            samples[name]["cpu"].append((c1 - c0) / batch / 1000.0)
    return samples


# A sync call's hooks, in the order LiteLLM calls them: the pick, the start, the completion.
REPLAYED = tuple((cls, name) for cls, name in HOOKS if not name.startswith("async_"))


def replay(folder: str, calls: int, repeats: int = 5) -> Dict[str, Any]:
    """dualtrack's three hooks of one routed sync call, replayed on its real arguments: us per call."""
    hooks = {name: inspect.unwrap(getattr(cls, name)) for cls, name in REPLAYED}  # without HookClock's timing
    captured: Dict[str, Dict[str, Any]] = {}
    saved = [(cls, name, cls.__dict__[name]) for cls, name in REPLAYED]

    def capturing(name: str) -> Any:
        def hook(self: Any, **kwargs: Any) -> Any:
            captured.setdefault(name, kwargs)
            return hooks[name](self, **kwargs)
        return hook

    router = Router(model_list=MODEL_LIST)
    handle = instrument(router, make_optimizer(folder))
    try:
        for cls, name in REPLAYED:
            setattr(cls, name, capturing(name))
        try:
            router.completion(model="chat", messages=MESSAGES)
            if not handle.drain(30):
                raise RuntimeError("the captured call was never recorded")
        finally:
            for cls, name, method in saved:
                setattr(cls, name, method)
        if set(captured) != set(hooks):
            raise RuntimeError(f"LiteLLM called {sorted(captured)} of dualtrack's hooks, not all three; "
                               "does it still pass them keyword arguments?")
        pick, start, done = (captured[name] for _, name in REPLAYED)
        request = pick["request_kwargs"]
        started, finished = start["kwargs"], done["kwargs"]
        strategy, recorder = handle.hook, handle.recorder
        get, pre, success = (hooks[name] for _, name in REPLAYED)

        def run(first: int, n: int) -> None:
            for i in range(first, first + n):
                trace, call = f"replay-trace-{i}", f"replay-call-{i}"
                request["litellm_trace_id"] = trace
                request.pop("timeout", None)
                get(strategy, **pick)
                started["litellm_call_id"] = finished["litellm_call_id"] = call
                started["litellm_trace_id"] = finished["litellm_trace_id"] = trace
                pre(recorder, **start)
                success(recorder, **done)

        run(0, min(calls, 2000))  # warm-up
        per_call = []
        for r in range(repeats):
            t0 = time.perf_counter_ns()
            run(10_000 + r * calls, calls)
            per_call.append((time.perf_counter_ns() - t0) / calls / 1000.0)
        recorded = recorder.in_flight() == 0
    finally:
        handle.close()
    return {"us_per_call_median": statistics.median(per_call), "us_per_call": per_call, "calls": calls,
            "repeats": repeats, "all_recorded": recorded}


def paired(a: List[float], b: List[float]) -> Dict[str, float]:
    """Median and p10/p90 of the per-round differences a - b."""
    diffs = sorted(x - y for x, y in zip(a, b, strict=True))
    return {"median_us": statistics.median(diffs), "p10_us": diffs[len(diffs) // 10],
            "p90_us": diffs[(len(diffs) * 9) // 10]}


def report(mode: str, samples: Dict[str, Dict[str, List[float]]], hook_us: Dict[str, float]) -> Dict[str, Any]:
    """Print one mode's tables; return every figure."""
    figures: Dict[str, Any] = {}
    for clock in ("wall", "cpu"):
        per_variant = {n: statistics.median(samples[n][clock]) for n in samples}
        routing = paired(samples["router"][clock], samples["bare"][clock])
        added = {n: paired(samples[n][clock], samples["router"][clock]) for n in ADDED}
        overhead = routing["median_us"]
        print(f"\n{mode}, {clock} time, microseconds per call over {len(samples['bare'][clock])} rounds")
        print(f"  {'':<42}{'median':>9}   added to the Router (p10..p90)   share of LiteLLM's overhead")
        for name, label in LABELS.items():
            line = f"  {label:<42}{per_variant[name]:>9,.1f}"
            if name == "router":
                line += (f"   {routing['median_us']:+9,.1f} over bare "
                         f"({routing['p10_us']:+,.1f}..{routing['p90_us']:+,.1f})")
            if name in added:
                a = added[name]
                share = a["median_us"] / overhead if overhead > 0 else None
                a["share_of_litellm_overhead"] = share
                line += f"   {a['median_us']:+9,.1f} ({a['p10_us']:+,.1f}..{a['p90_us']:+,.1f})"
                line += f"   {share:+.1%}" if share is not None else ""
            print(line)
        share = added["dualtrack"]["share_of_litellm_overhead"]
        verdict = "meets" if share is not None and share <= TARGET_SHARE else "MISSES"
        print(f"  dualtrack adds {added['dualtrack']['median_us']:+,.1f} us to LiteLLM's {overhead:,.1f} us: "
              f"{verdict} the {TARGET_SHARE:.0%} target")
        figures[clock] = {"median_us": per_variant, "litellm_routing_overhead_us": routing, "added": added,
                          "verdict": verdict}
    router_overhead = figures["cpu"]["litellm_routing_overhead_us"]["median_us"]
    for name, us in hook_us.items():
        share = us / router_overhead if router_overhead > 0 else None
        print(f"  CPU inside dualtrack's hooks, {LABELS[name]}: {us:,.1f} us per call"
              + (f" = {share:.1%} of LiteLLM's routing overhead (CPU)" if share is not None else ""))
    figures["hook_cpu_us"] = hook_us
    return figures


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, help="rounds, one batch of every variant each (default 200; --quick 8)")
    parser.add_argument("--batch", type=int, help="calls per batch (default 40; --quick 20)")
    parser.add_argument("--mode", choices=("sync", "async", "both"), default="both",
                        help="Router.completion, await Router.acompletion, or both (default)")
    parser.add_argument("--quick", action="store_true", help="a few seconds, rough numbers (a smoke test)")
    parser.add_argument("--replay-calls", type=int, metavar="N",
                        help="calls per repeat of the replay of dualtrack's hooks (default 20000; --quick 1000; "
                             "0: no replay)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(list(argv))
    if args.rounds is None:
        args.rounds = 8 if args.quick else 200
    if args.batch is None:
        args.batch = 20 if args.quick else 40
    if args.replay_calls is None:
        args.replay_calls = 1000 if args.quick else 20000
    if args.rounds <= 0 or args.batch <= 0:
        parser.error("--rounds and --batch must be positive")
    if args.replay_calls < 0:
        parser.error("--replay-calls must be 0 or more")

    machine = announce("dualtrack inside LiteLLM: overhead per Router call")
    machine["litellm"] = version("litellm")
    print(f"litellm {machine['litellm']}; {args.rounds} rounds of {args.batch} calls per variant; mock deployments")
    results: Dict[str, Any] = {"machine": machine, "settings": vars(args).copy(), "timing": {}}
    clock = HookClock()
    modes = ("sync", "async") if args.mode == "both" else (args.mode,)
    with tempfile.TemporaryDirectory(prefix="dualtrack-bench-") as folder:
        for mode in modes:
            variants = Variants(os.path.join(folder, mode), mode, clock)
            try:
                samples = measure(variants, args.rounds, args.batch)
                calls = args.rounds * args.batch
                hook_us = {n: clock.ns.get(n, 0) / calls / 1000.0 for n in ("dualtrack", "dualtrack_record_only")}
                recorded = variants.recorded_calls("dualtrack")
            finally:
                variants.close()
            figures = report(mode, samples, hook_us)
            figures["dualtrack_recorded_calls"] = sum(recorded.values())
            figures["dualtrack_local_share"] = recorded["local"] / max(sum(recorded.values()), 1.0)
            print(f"  dualtrack's calls on the local deployment: {figures['dualtrack_local_share']:.1%} "
                  "(the plain Router: half, by its shuffle)")
            results["timing"][mode] = figures
        if args.replay_calls:
            replayed = replay(os.path.join(folder, "replay"), args.replay_calls)
            results["replay"] = replayed
            print(f"\ndualtrack's hooks replayed on one routed call's real arguments (pick, start, completion; "
                  f"no LiteLLM around them): {replayed['us_per_call_median']:,.1f} us per call "
                  f"(median of {replayed['repeats']} x {replayed['calls']:,} calls)")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
