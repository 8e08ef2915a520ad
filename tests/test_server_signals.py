"""The local model server's own load in the adaptation: estimator, split, embedded scraping.

- The estimator judges the server's queue against what the planned local load
  explains (Erlang C) and cuts a server capacity one interval after a queue
  forms, while the finished calls' latency is still normal; the split then
  gives local traffic back to the API. Without server signals nothing changes.
- Scraped gauges lag; the routers' own local calls in flight do not: the
  queue is the larger of the two views.
- ``LocalServerScraper`` reads each server's real /metrics format (the
  loopback fakes of tests/support/model_servers.py) into the same five values
  local_server_rules.yml records, counts bad pages and keeps its last good
  reading, which goes stale after three intervals.
- The façade wires it: ``local_server_metrics_url`` in the configuration, the
  signals in the embedded source.
"""

from __future__ import annotations

from typing import Dict, Iterator, Tuple

import pytest
from prometheus_client import CollectorRegistry

from dualtrack import DualTrackOptimizer, OptimizationConfig
from dualtrack.adapter.estimator import Estimator, Tally, queue_length
from dualtrack.adapter.objective import ObjectiveSpec, choose_split
from dualtrack.adapter.signals import SignalValues
from dualtrack.clock import VirtualClock
from dualtrack.exporter.local_server import LocalServerScraper, normalize
from support.model_servers import LlamaCppServer, SGLangServer, TGIServer, VLLMServer, set_reference_load
from support.waiting import wait_until
from test_objective import INTERVAL, calls, interval, steady

SPEC = ObjectiveSpec(value_noise=0.0)


def _counts() -> Dict[Tuple[str, str], Tally]:
    """Local as good as the API and free, latency normal (1 s): local wins every class."""
    return steady(calls(60, latency=1.0), calls(60, cost=0.001), "short")


def _cycle(est: Estimator, **server: float) -> float:
    """One interval with the given server signals; the short class's local share chosen."""
    est.update(interval(_counts(), **server), INTERVAL)
    split = choose_split(est, SPEC, interval_seconds=INTERVAL)
    est.wanted_load = split.wanted_load
    return split.shares["short"]


def _warm() -> Estimator:
    est = Estimator(("short",))
    for _ in range(3):
        _cycle(est, local_server_queue_depth=0, local_server_running=2, local_server_slots=8)
    return est


def test_without_server_signals_the_estimator_ignores_them() -> None:
    est = Estimator(("short",))
    share = _cycle(est)
    assert est.server_queue is None and est.server_capacity is None and not est.server_full
    assert share > 0.9


def test_a_queue_beyond_the_plan_gives_local_traffic_back_before_latency_rises() -> None:
    est = _warm()
    before = _cycle(est, local_server_queue_depth=0, local_server_running=2, local_server_slots=8)
    planned = est.planned_load
    assert planned is not None and planned > 0
    # The same finished calls (1 s, all within target), but now 12 requests wait for a slot.
    after = _cycle(est, local_server_queue_depth=12, local_server_running=8, local_server_slots=8)
    assert est.server_full
    assert est.server_capacity == pytest.approx(est.settings.capacity_cut * planned)
    assert after < before - 0.05, (before, after)
    assert any("local server queues 12" in r for r in choose_split(est, SPEC, interval_seconds=INTERVAL).reasons)


def test_a_queue_the_planned_load_explains_is_not_a_cut() -> None:
    est = _warm()
    planned = est.planned_load
    assert planned is not None
    expected = queue_length(8, planned)
    # Within twice what Erlang C expects at the planned load: ordinary queueing, planned for.
    _cycle(est, local_server_queue_depth=min(2.0, 2 * expected + 1.0), local_server_running=8,
           local_server_slots=8)
    assert not est.server_full and est.server_capacity is None


def test_the_routers_own_calls_in_flight_see_the_queue_before_the_next_scrape() -> None:
    est = _warm()
    # The last scrape still says 0 waiting; this router alone has 20 local calls on 8 slots.
    _cycle(est, local_server_queue_depth=0, local_server_running=8, local_server_slots=8, local_calls_in_flight=20)
    assert est.server_queue == 12
    assert est.server_full


def test_without_declared_slots_a_queue_means_every_running_slot_is_busy() -> None:
    est = _warm()
    _cycle(est, local_server_queue_depth=9, local_server_running=6)
    assert est.server_full  # 9 waiting on 6 busy slots, nothing planned explains it


def test_a_full_kv_cache_or_preemptions_mean_full_too() -> None:
    est = _warm()
    _cycle(est, local_server_queue_depth=1, local_server_running=4, local_server_slots=8,
           local_server_kv_cache_usage_ratio=0.99)
    assert est.server_full
    est = _warm()
    _cycle(est, local_server_queue_depth=0, local_server_running=4, local_server_slots=8,
           local_server_preemptions_per_second=0.5)
    assert est.server_full


def test_losing_the_server_signals_drops_their_cap() -> None:
    est = _warm()
    _cycle(est, local_server_queue_depth=12, local_server_running=8, local_server_slots=8)
    assert est.server_capacity is not None
    _cycle(est)  # the scrapes stopped: no local_server_* at all
    assert est.server_capacity is None and est.server_queue is None and not est.server_full


def test_the_server_capacity_is_released_once_the_queue_is_gone_and_the_load_fits() -> None:
    est = _warm()
    _cycle(est, local_server_queue_depth=12, local_server_running=8, local_server_slots=8)
    assert est.server_capacity is not None
    for _ in range(12):
        share = _cycle(est, local_server_queue_depth=0, local_server_running=2, local_server_slots=8)
        if est.server_capacity is None:
            break
    assert est.server_capacity is None
    assert share > 0.9


# --------------------------------------------------------------------------- scraping each server's format


@pytest.fixture(scope="module")
def servers() -> Iterator[Dict[str, object]]:
    vllm = VLLMServer(engines=2).start()
    vllm_old = VLLMServer(legacy_kv_name=True).start()
    llama = LlamaCppServer().start()
    sglang = SGLangServer(dp_ranks=2, tp_size=2, all_schedulers=True, priority_scheduling=True).start()
    tgi = TGIServer(max_batch_total_tokens=16000).start()
    try:
        set_reference_load(vllm, vllm_old, llama, sglang, tgi)
        yield {"vllm": vllm, "vllm_old": vllm_old, "llamacpp": llama, "sglang": sglang, "tgi": tgi}
    finally:
        for fake in (vllm, vllm_old, llama, sglang, tgi):
            fake.stop()


def _url(fake: object) -> str:
    return f"http://{fake.address}/metrics"  # type: ignore[attr-defined]


# The same numbers local_server_rules.yml records from the same state (test_local_servers.py).
@pytest.mark.parametrize("name, server, queue, running, kv", [
    ("vllm", "vllm", 5, 12, 0.625),       # two engines summed, the fuller KV cache
    ("vllm_old", "vllm", 1, 4, 0.5),      # vllm:gpu_cache_usage_perc
    ("llamacpp", "llamacpp", 2, 4, None),  # current builds: no KV-cache gauge
    ("sglang", "sglang", 5, 14, 0.75),     # DP ranks summed, TP ranks and priorities not
    ("tgi", "tgi", 3, 6, 0.25),            # 4000 of 16000 batch tokens
])
def test_each_servers_page_reads_as_the_recording_rules_read_it(servers, name, server, queue, running, kv) -> None:
    scraper = LocalServerScraper(_url(servers[name]), slots=16, registry=CollectorRegistry())
    reading = scraper.scrape_now()
    assert reading is not None
    assert (reading.server, reading.queue_depth, reading.running, reading.slots) == (server, queue, running, 16)
    assert reading.kv_cache_usage_ratio == (pytest.approx(kv) if kv is not None else None)
    assert reading.preemptions_per_second is None  # one scrape: no rate yet


def test_preemptions_are_a_rate_between_two_scrapes(servers) -> None:
    clock = VirtualClock()
    vllm = servers["vllm"]
    scraper = LocalServerScraper(_url(vllm), registry=CollectorRegistry(), clock=clock)
    assert scraper.scrape_now() is not None
    vllm.preempt(engine=1, count=30)  # type: ignore[attr-defined]
    clock.advance(10.0)
    reading = scraper.scrape_now()
    assert reading is not None and reading.preemptions_per_second == pytest.approx(3.0)


def test_bad_pages_are_counted_and_the_last_good_reading_kept_until_stale(servers) -> None:
    clock = VirtualClock()
    registry = CollectorRegistry()
    pages = {"body": b"", "status": 200}
    good = LocalServerScraper(_url(servers["llamacpp"]), registry=CollectorRegistry()).scrape_now()
    assert good is not None

    class Raw:
        def read(self, n: int, decode_content: bool = True) -> bytes:
            return pages["body"]  # type: ignore[return-value]

    class Response:
        raw = Raw()

        @property
        def status_code(self) -> int:
            return pages["status"]  # type: ignore[return-value]

        def __enter__(self) -> "Response":
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    scraper = LocalServerScraper("http://127.0.0.1:9/metrics", interval=1.0, registry=registry, clock=clock,
                                 get=lambda *a, **k: Response())
    pages["body"] = b"llamacpp:requests_processing 3\nllamacpp:requests_deferred 7\n"
    assert scraper.scrape_now() is not None
    for body, status, result in ((b"this is { not exposition", 200, "unparsable"),
                                 (b"node_load1 0.5\n", 200, "unknown_server"),
                                 (b"", 503, "bad_status")):
        pages["body"], pages["status"] = body, status
        assert scraper.scrape_now() is None
        assert registry.get_sample_value("dualtrack_local_server_scrapes_total", {"result": result}) == 1.0
        kept = scraper.reading()
        assert kept is not None and kept.queue_depth == 7  # the last good one
    clock.advance(3.5)  # more than three intervals since it was read
    assert scraper.reading() is None
    assert registry.get_sample_value("dualtrack_local_server_scrapes_total", {"result": "ok"}) == 1.0


def test_an_unreachable_server_is_counted_not_raised() -> None:
    registry = CollectorRegistry()
    scraper = LocalServerScraper("http://127.0.0.1:9/metrics", timeout=0.5, registry=registry)
    assert scraper.scrape_now() is None
    assert registry.get_sample_value("dualtrack_local_server_scrapes_total", {"result": "unreachable"}) == 1.0


def test_normalize_rejects_text_that_is_not_exposition() -> None:
    with pytest.raises(ValueError):
        normalize("vllm:num_requests_waiting{model_name=\"x\" 3\n")
    assert normalize("# nothing here\n") is None


def test_the_config_refuses_a_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="local_server_metrics_url"):
        OptimizationConfig(local_server_metrics_url="127.0.0.1:8000/metrics")
    with pytest.raises(ValueError, match="local_server_slots"):
        OptimizationConfig(local_server_slots=-1)


def test_the_optimizer_scrapes_the_local_server_into_its_signals(servers) -> None:
    vllm = servers["vllm"]
    config = OptimizationConfig(local_server_metrics_url=_url(vllm), local_server_slots=24,
                                monitor_interval_seconds=0.05, enable_resource_monitoring=False)
    with DualTrackOptimizer(config) as optimizer:
        optimizer.record_request_start("a", "hello", {"track": "local"})
        optimizer.record_request_start("b", "hello", {"track": "local"})
        optimizer.record_request_start("c", "hello", {"track": "api"})
        assert optimizer.adaptive is not None
        source = optimizer.adaptive.source
        values: SignalValues = wait_until(lambda: (v := source.fetch()).get("local_server_queue_depth", {})
                                          is not None and v, timeout=10, what="a scrape of the fake vLLM")
        assert values.get("local_server_running", {}) == 12
        assert values.get("local_server_slots", {}) == 24
        assert values.get("local_calls_in_flight", {}) == 2
        assert values.get("api_calls_in_flight", {}) == 1
        registry = optimizer.registry
        assert registry.get_sample_value("dualtrack_calls_in_flight", {"track": "local"}) == 2.0
        assert registry.get_sample_value("dualtrack_calls_in_flight", {"track": "api"}) == 1.0
        assert (registry.get_sample_value("dualtrack_local_server_scrapes_total", {"result": "ok"}) or 0) >= 1
