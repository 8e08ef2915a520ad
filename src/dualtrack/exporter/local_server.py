"""The local model server's own load, read from its /metrics without Prometheus (embedded mode).

A single-machine user runs no Prometheus, yet the local model server already
says how loaded it is. ``LocalServerScraper`` fetches the server's
``/metrics`` on the monitor's interval, parses it with ``prometheus_client``'s
text parser and reduces it to the five values ``local_server_rules.yml``
records for Prometheus users, by the same rules (docs/local-servers.md):

=======================  ======================================  ====================================
value                    vLLM (v1)                               llama.cpp / SGLang / TGI
=======================  ======================================  ====================================
queue_depth              sum ``vllm:num_requests_waiting``       ``llamacpp:requests_deferred`` /
                                                                 ``sglang:num_queue_reqs`` /
                                                                 ``tgi_queue_size``
running                  sum ``vllm:num_requests_running``       ``llamacpp:requests_processing`` /
                                                                 ``sglang:num_running_reqs`` /
                                                                 ``tgi_batch_current_size``
kv_cache_usage_ratio     max ``vllm:kv_cache_usage_perc``        ``llamacpp:kv_cache_usage_ratio`` /
                         (older: ``vllm:gpu_cache_usage_perc``)  ``sglang:token_usage`` / TGI's
                                                                 current over max batch tokens
preemptions_per_second   rate of ``vllm:num_preemptions_total``  SGLang's ``num_retracted_requests``
=======================  ======================================  ====================================

SGLang's series are first reduced with ``max`` within each ``dp_rank`` (every
tensor-parallel rank may report the same scheduler) and only its total
(``priority=""``) is read. ``slots`` is what the configuration declares
(``local_server_slots``): no server exports it.

Which server it is comes from the names in the exposition, so one URL is all
the configuration needs. A failed scrape or a page that parses to nothing
known is counted in ``dualtrack_local_server_scrapes_total{result}`` and
logged once; the last good reading stays in use for three intervals, then
there is none (no data, never a stale number passed off as fresh).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import requests
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from .._http import connection_reason, short
from .._once import OnceLogger
from ..clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

#: Readings older than this many scrape intervals are no data.
STALE_INTERVALS = 3
#: The most of a /metrics page read (a vLLM page is ~100 kB with histograms).
MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class LocalServerLoad:
    """One reading of a local model server's load (None: the server does not say)."""

    server: str  # vllm, llamacpp, sglang, tgi
    queue_depth: Optional[float]
    running: Optional[float]
    slots: Optional[float]
    kv_cache_usage_ratio: Optional[float]
    preemptions_per_second: Optional[float]
    read_at: float  # monotonic seconds
    preemptions_total: Optional[float] = None  # the counter behind the rate


Samples = Dict[str, list]  # sample name -> [(labels, value)]


def _samples(text: str) -> Samples:
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((sample.labels, sample.value))
    return out


def _sum(samples: Iterable[Tuple[dict, float]]) -> Optional[float]:
    values = [v for _, v in samples]
    return sum(values) if values else None


def _max(samples: Iterable[Tuple[dict, float]]) -> Optional[float]:
    values = [v for _, v in samples]
    return max(values) if values else None


def _sglang(samples: Iterable[Tuple[dict, float]]) -> Optional[float]:
    """SGLang: the total (``priority=""`` or none), max within each dp_rank, summed."""
    per_rank: Dict[str, float] = {}
    for labels, value in samples:
        if labels.get("priority", "") != "":
            continue
        rank = labels.get("dp_rank", "")
        per_rank[rank] = max(per_rank.get(rank, value), value)
    return sum(per_rank.values()) if per_rank else None


def normalize(text: str) -> Optional[Tuple[str, Dict[str, Optional[float]]]]:
    """``(server, {queue_depth, running, kv_cache_usage_ratio, preemptions_total})`` from a
    /metrics page, or None when it holds no known server's load. Raises ``ValueError`` on
    text that is not the exposition format."""
    s = _samples(text)
    if "vllm:num_requests_waiting" in s or "vllm:num_requests_running" in s:
        kv = _max(s.get("vllm:kv_cache_usage_perc", [])) if "vllm:kv_cache_usage_perc" in s \
            else _max(s.get("vllm:gpu_cache_usage_perc", []))
        return "vllm", {"queue_depth": _sum(s.get("vllm:num_requests_waiting", [])),
                        "running": _sum(s.get("vllm:num_requests_running", [])),
                        "kv_cache_usage_ratio": kv,
                        "preemptions_total": _sum(s.get("vllm:num_preemptions_total", []))}
    if "llamacpp:requests_processing" in s or "llamacpp:requests_deferred" in s:
        return "llamacpp", {"queue_depth": _sum(s.get("llamacpp:requests_deferred", [])),
                            "running": _sum(s.get("llamacpp:requests_processing", [])),
                            "kv_cache_usage_ratio": _max(s.get("llamacpp:kv_cache_usage_ratio", [])),
                            "preemptions_total": None}
    if "sglang:num_queue_reqs" in s or "sglang:num_running_reqs" in s:
        return "sglang", {"queue_depth": _sglang(s.get("sglang:num_queue_reqs", [])),
                          "running": _sglang(s.get("sglang:num_running_reqs", [])),
                          "kv_cache_usage_ratio": _max((lab, v) for lab, v in s.get("sglang:token_usage", [])
                                                       if lab.get("priority", "") == ""),
                          "preemptions_total": _sglang(s.get("sglang:num_retracted_requests_total", []))}
    if "tgi_queue_size" in s or "tgi_batch_current_size" in s:
        kv = None
        used, total = _max(s.get("tgi_batch_current_max_tokens", [])), _max(s.get("tgi_batch_max_total_tokens", []))
        if used is not None and total:
            kv = min(1.0, max(0.0, used / total))
        return "tgi", {"queue_depth": _sum(s.get("tgi_queue_size", [])),
                       "running": _sum(s.get("tgi_batch_current_size", [])),
                       "kv_cache_usage_ratio": kv, "preemptions_total": None}
    return None


class LocalServerScraper:
    """Reads a local model server's /metrics every ``interval`` seconds on a thread.

    >>> scraper = LocalServerScraper("http://127.0.0.1:8000/metrics", slots=8)
    >>> scraper.start(); ...; scraper.reading()   # LocalServerLoad or None
    """

    def __init__(self, url: str, *, slots: Optional[int] = None, interval: float = 1.0, timeout: float = 2.0,
                 registry: Optional[CollectorRegistry] = None, clock: Clock = SYSTEM_CLOCK,
                 get: Callable[..., requests.Response] = requests.get) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"local_server_metrics_url: expected an http(s) URL, got {url!r}")
        self.url = url
        self.slots = slots
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self._get = get
        self._last: Optional[LocalServerLoad] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._once = OnceLogger(log)
        self.scrapes = Counter("dualtrack_local_server_scrapes", "Scrapes of the local model server's /metrics "
                               "(embedded mode), by result.", ["result"], registry=registry)
        for result in ("ok", "unreachable", "bad_status", "unparsable", "unknown_server"):
            self.scrapes.labels(result)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dualtrack-local-server", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scrape_now()
            self._stop.wait(self.interval)

    # ------------------------------------------------------------ reading

    def reading(self) -> Optional[LocalServerLoad]:
        """The last good reading, or None when there is none younger than three intervals."""
        last = self._last
        if last is None or self.clock.monotonic() - last.read_at > STALE_INTERVALS * self.interval:
            return None
        return last

    def scrape_now(self) -> Optional[LocalServerLoad]:
        """Scrape once; the new reading, or None (counted, logged once, the last good one kept)."""
        try:
            resp = self._get(self.url, timeout=self.timeout, headers={"Accept": "text/plain"}, stream=True)
        except requests.RequestException as err:
            self._fail("unreachable", f"cannot reach {self.url}: {connection_reason(err)}")
            return None
        with resp:
            if resp.status_code != 200:
                self._fail("bad_status", f"{self.url} answered HTTP {resp.status_code}")
                return None
            body = resp.raw.read(MAX_BYTES + 1, decode_content=True) if resp.raw is not None else resp.content
        if len(body) > MAX_BYTES:
            self._fail("unparsable", f"{self.url}: more than {MAX_BYTES} bytes")
            return None
        try:
            found = normalize(body.decode("utf-8", errors="replace"))
        except ValueError as err:
            self._fail("unparsable", f"{self.url}: not the Prometheus text format ({short(str(err))})")
            return None
        if found is None:
            self._fail("unknown_server", f"{self.url}: no vLLM, llama.cpp, SGLang or TGI load metrics")
            return None
        server, values = found
        now = self.clock.monotonic()
        rate = None
        total = values["preemptions_total"]
        last = self._last
        if total is not None and last is not None and last.preemptions_total is not None and now > last.read_at:
            # A counter reset (server restart) reads as a drop: rate from zero, as PromQL's rate() does.
            grown = total - last.preemptions_total if total >= last.preemptions_total else total
            rate = grown / (now - last.read_at)
        reading = LocalServerLoad(server, values["queue_depth"], values["running"],
                                  float(self.slots) if self.slots else None, values["kv_cache_usage_ratio"],
                                  rate, now, total)
        self._last = reading
        self.scrapes.labels("ok").inc()
        self._once.clear()  # a later failure is news again
        return reading

    def _fail(self, result: str, message: str) -> None:
        self.scrapes.labels(result).inc()
        self._once.warning(result, "dualtrack: local server scrape failed (counted in "
                           "dualtrack_local_server_scrapes_total{result=%r}; last good reading kept): %s",
                           result, message)


__all__ = ["LocalServerLoad", "LocalServerScraper", "normalize"]
