"""Fake local model servers: /metrics on 127.0.0.1 in each real server's format.

Each fake serves the exposition text its server really produces (metric
names, HELP/TYPE lines, labels, value formatting), rendered from state the
test changes while Prometheus scrapes it:

- ``VLLMServer``: vLLM's v1 ``PrometheusStatLogger`` (vllm/v1/metrics/loggers.py),
  through prometheus_client as vLLM does: labels ``model_name`` and
  ``engine`` (one per data-parallel engine), counters with ``_total`` and
  ``_created``. ``legacy_kv_name=True`` is a release before 0.9:
  ``vllm:gpu_cache_usage_perc`` instead of ``vllm:kv_cache_usage_perc``.
- ``LlamaCppServer``: ``llama-server --metrics`` (tools/server): unlabelled
  ``llamacpp:*`` lines written by hand in C++, ``%g`` numbers. ``legacy_kv=True``
  is an older build that still exported ``llamacpp:kv_cache_usage_ratio``.
- ``SGLangServer``: SGLang's ``SchedulerMetricsCollector``
  (python/sglang/srt/observability/metrics_collector.py) as its
  multiprocess prometheus_client collector writes it: labels ``model_name``,
  ``engine_type``, ``tp_rank``, ``pp_rank``, ``moe_ep_rank``, optional
  ``dp_rank`` and ``priority``, sorted, no ``_created`` series.
- ``TGIServer``: text-generation-inference's router (metrics-exporter-prometheus):
  unlabelled ``tgi_*`` gauges, integers without a decimal point.

Usage::

    with VLLMServer(engines=2) as vllm:
        vllm.set(engine=1, waiting=4, running=8, kv_cache_usage=0.5)
        vllm.preempt(engine=1, count=3)
        ...  # scrape vllm.address

The fakes answer GET /metrics only (404 elsewhere) and count the scrapes.
"""

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .net import LOOPBACK

Sample = Tuple[Mapping[str, str], float]


class ModelServerFake:
    """An HTTP server on a free loopback port whose /metrics is ``render()``."""

    #: the ``server`` label local_server_rules.yml gives this server's series
    server: ClassVar[str] = ""
    content_type: ClassVar[str] = "text/plain; version=0.0.4"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.scrapes = 0

    def render(self) -> str:
        """The exposition text for the current state (called under the lock)."""
        raise NotImplementedError

    def exposition(self) -> str:
        with self._lock:
            return self.render()

    # -- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() first"
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        """``host:port``, as a scrape target (and the ``instance`` label)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> "ModelServerFake":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?", 1)[0] != "/metrics":
                    body, status, kind = b"not found", 404, "text/plain"
                else:
                    with fake._lock:
                        fake.scrapes += 1
                        body, status, kind = fake.render().encode(), 200, fake.content_type
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self._httpd = Server((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
            name=f"fake-{self.server}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ModelServerFake":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- hand-written exposition


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, help_text: str, kind: str, samples: Iterable[Sample],
            number: Any = repr, sort_labels: bool = False) -> List[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        items = sorted(labels.items()) if sort_labels else list(labels.items())
        rendered = ",".join(f'{k}="{_escape(str(v))}"' for k, v in items)
        lines.append(f"{name}{{{rendered}}} {number(value)}" if rendered else f"{name} {number(value)}")
    return lines


def _cpp_number(value: float) -> str:
    """How ``std::stringstream << double`` writes a number (llama.cpp): ``%g``."""
    return format(value, "g")


def _rust_number(value: float) -> str:
    """How metrics-exporter-prometheus writes an f64 (TGI): no ``.0`` on integers."""
    if math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return repr(float(value))


# --------------------------------------------------------------------------- vLLM


class VLLMServer(ModelServerFake):
    """vLLM (v1 engine), ``engines`` data-parallel engines behind one API server."""

    server = "vllm"
    # prometheus_client's own content type: vLLM serves its registry with it.
    content_type = "text/plain; version=0.0.4; charset=utf-8"
    TTFT_BUCKETS: ClassVar[Sequence[float]] = (
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
        2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
    )

    def __init__(self, *, model_name: str = "meta-llama/Llama-3.1-8B-Instruct", engines: int = 1,
                 legacy_kv_name: bool = False) -> None:
        super().__init__()
        self.model_name = model_name
        self.engines = engines
        self.legacy_kv_name = legacy_kv_name
        # A registry per fake, as each vLLM process has its own.
        self.registry = CollectorRegistry()
        names = ["model_name", "engine"]
        self._running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                              names, registry=self.registry)
        self._waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                              names, registry=self.registry)
        if legacy_kv_name:
            self._kv = Gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
                             names, registry=self.registry)
        else:
            self._kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                             names, registry=self.registry)
        self._preemptions = Counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                                    names, registry=self.registry)
        self._prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                      names, registry=self.registry)
        self._generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.",
                                          names, registry=self.registry)
        self._ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                               names, buckets=self.TTFT_BUCKETS, registry=self.registry)
        cache_info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                           ["block_size", "cache_dtype", "gpu_memory_utilization", "num_gpu_blocks", "engine"],
                           registry=self.registry)
        for engine in range(engines):
            labels = (model_name, str(engine))
            # Every child exists from the start, at 0, as in vLLM.
            self._running.labels(*labels).set(0)
            self._waiting.labels(*labels).set(0)
            self._kv.labels(*labels).set(0)
            self._preemptions.labels(*labels)
            self._prompt_tokens.labels(*labels)
            self._generation_tokens.labels(*labels)
            self._ttft.labels(*labels)
            cache_info.labels("16", "auto", "0.9", "27000", str(engine)).set(1)

    def set(self, *, engine: int = 0, waiting: Optional[int] = None, running: Optional[int] = None,
            kv_cache_usage: Optional[float] = None) -> None:
        labels = (self.model_name, str(engine))
        with self._lock:
            if waiting is not None:
                self._waiting.labels(*labels).set(waiting)
            if running is not None:
                self._running.labels(*labels).set(running)
            if kv_cache_usage is not None:
                self._kv.labels(*labels).set(kv_cache_usage)

    def preempt(self, *, engine: int = 0, count: int = 1) -> None:
        with self._lock:
            self._preemptions.labels(self.model_name, str(engine)).inc(count)

    def serve_request(self, *, engine: int = 0, ttft_seconds: float = 0.2, prompt: int = 100,
                      generated: int = 50) -> None:
        """A finished request, for the counters and the TTFT histogram."""
        labels = (self.model_name, str(engine))
        with self._lock:
            self._ttft.labels(*labels).observe(ttft_seconds)
            self._prompt_tokens.labels(*labels).inc(prompt)
            self._generation_tokens.labels(*labels).inc(generated)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


# --------------------------------------------------------------------------- llama.cpp


class LlamaCppServer(ModelServerFake):
    """``llama-server --metrics``: one process, unlabelled gauges and counters."""

    server = "llamacpp"
    content_type = "text/plain; version=0.0.4"

    def __init__(self, *, legacy_kv: bool = False, n_ctx: int = 8192) -> None:
        super().__init__()
        self.legacy_kv = legacy_kv
        self.n_ctx = n_ctx
        self.deferred = 0
        self.processing = 0
        self.kv_cache_usage = 0.0
        self.prompt_tokens = 0
        self.predicted_tokens = 0
        self.n_decode = 0

    def set(self, *, deferred: Optional[int] = None, processing: Optional[int] = None,
            kv_cache_usage: Optional[float] = None) -> None:
        with self._lock:
            if deferred is not None:
                self.deferred = deferred
            if processing is not None:
                self.processing = processing
            if kv_cache_usage is not None:
                self.kv_cache_usage = kv_cache_usage

    def render(self) -> str:
        def item(name: str, help_text: str, kind: str, value: float) -> List[str]:
            return _family(f"llamacpp:{name}", help_text, kind, [({}, value)], number=_cpp_number)

        # The order and wording of server_task_result_metrics::to_metrics():
        # counters first, then gauges.
        lines: List[str] = []
        lines += item("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens",
                      "counter", self.prompt_tokens)
        lines += item("prompt_seconds_total", "Total time spent processing prompts", "counter",
                      self.prompt_tokens / 1500.0)
        lines += item("tokens_predicted_total", "Number of generation tokens processed", "counter",
                      self.predicted_tokens)
        lines += item("tokens_predicted_seconds_total", "Total time spent generating tokens", "counter",
                      self.predicted_tokens / 45.0)
        lines += item("n_decode_total", "Total number of llama_decode() calls, excluding speculative decoding and "
                      "multimodal decoding", "counter", self.n_decode)
        lines += item("n_tokens_max", "Largest observed sequence length (prompt + generation)", "counter", 0)
        lines += item("prompt_tokens_seconds", "Average prompt throughput in tokens/s", "gauge", 0)
        lines += item("predicted_tokens_seconds", "Average generation throughput in tokens/s", "gauge", 0)
        if self.legacy_kv:
            # Older builds only: the share of the context's cells in use.
            lines += item("kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.", "gauge",
                          self.kv_cache_usage)
            lines += item("kv_cache_tokens", "KV-cache tokens.", "gauge", round(self.kv_cache_usage * self.n_ctx))
        lines += item("requests_processing", "Number of requests processing", "gauge", self.processing)
        lines += item("requests_deferred", "Number of requests deferred", "gauge", self.deferred)
        lines += item("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call", "gauge",
                      float(self.processing))
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- SGLang


class SGLangServer(ModelServerFake):
    """SGLang with ``--enable-metrics``: one scheduler per (DP, TP) rank.

    ``dp_ranks=None`` is a server without data parallelism (no ``dp_rank``
    label). ``all_schedulers`` makes every TP rank report the same scheduler
    state (``--enable-metrics-for-all-schedulers``); by default only TP
    rank 0 does. ``priority_scheduling`` adds the per-priority breakdown
    beside the total (``priority=""``).
    """

    server = "sglang"
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, *, model_name: str = "Qwen/Qwen2.5-7B-Instruct", dp_ranks: Optional[int] = None,
                 tp_size: int = 1, all_schedulers: bool = False, priority_scheduling: bool = False) -> None:
        super().__init__()
        self.model_name = model_name
        self.dp_ranks = dp_ranks
        self.tp_size = tp_size
        self.all_schedulers = all_schedulers
        self.priority_scheduling = priority_scheduling
        ranks = range(dp_ranks if dp_ranks is not None else 1)
        self.queue: Dict[int, int] = {r: 0 for r in ranks}
        self.queue_by_priority: Dict[int, Dict[int, int]] = {r: {} for r in ranks}
        self.running: Dict[int, int] = {r: 0 for r in ranks}
        self.token_usage: Dict[int, float] = {r: 0.0 for r in ranks}
        self.retracted: Dict[int, int] = {r: 0 for r in ranks}

    def set(self, *, dp_rank: int = 0, queue: Optional[int] = None, running: Optional[int] = None,
            token_usage: Optional[float] = None, queue_by_priority: Optional[Mapping[int, int]] = None) -> None:
        with self._lock:
            if queue is not None:
                self.queue[dp_rank] = queue
            if running is not None:
                self.running[dp_rank] = running
            if token_usage is not None:
                self.token_usage[dp_rank] = token_usage
            if queue_by_priority is not None:
                self.queue_by_priority[dp_rank] = dict(queue_by_priority)

    def retract(self, *, dp_rank: int = 0, count: int = 1) -> None:
        with self._lock:
            self.retracted[dp_rank] += count

    def _schedulers(self) -> List[Tuple[int, Dict[str, str]]]:
        out = []
        for dp_rank in self.queue:
            for tp_rank in range(self.tp_size if self.all_schedulers else 1):
                labels = {"model_name": self.model_name, "engine_type": "unified", "tp_rank": str(tp_rank),
                          "pp_rank": "0", "moe_ep_rank": "0"}
                if self.priority_scheduling:
                    labels["priority"] = ""
                if self.dp_ranks is not None:
                    labels["dp_rank"] = str(dp_rank)
                out.append((dp_rank, labels))
        return out

    def render(self) -> str:
        schedulers = self._schedulers()

        def family(name: str, help_text: str, kind: str, values: Mapping[int, float],
                   breakdown: Optional[Mapping[int, Mapping[int, int]]] = None) -> List[str]:
            samples: List[Sample] = []
            for dp_rank, labels in schedulers:
                samples.append((labels, values[dp_rank]))
                for priority, count in sorted((breakdown or {}).get(dp_rank, {}).items()):
                    samples.append(({**labels, "priority": str(priority)}, count))
            return _family(f"sglang:{name}", help_text, kind, samples, number=lambda v: repr(float(v)),
                           sort_labels=True)

        lines: List[str] = []
        lines += family("num_running_reqs", "The number of running requests.", "gauge", self.running)
        lines += family("num_queue_reqs", "The number of requests in the waiting queue.", "gauge", self.queue,
                        self.queue_by_priority if self.priority_scheduling else None)
        lines += family("num_grammar_queue_reqs", "The number of requests in the grammar waiting queue.", "gauge",
                        {r: 0 for r in self.queue})
        lines += family("gen_throughput", "The generation throughput (token/s).", "gauge",
                        {r: 40.0 * self.running[r] for r in self.queue})
        lines += family("token_usage", "The token usage.", "gauge", self.token_usage)
        # The multiprocess collector writes no _created series.
        lines += family("num_retracted_requests_total", "Total number of retracted requests.", "counter",
                        self.retracted)
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- TGI


class TGIServer(ModelServerFake):
    """text-generation-inference's router; ``v3=False`` is the v2 backend (no token budget gauge)."""

    server = "tgi"
    # axum answers a String body as plain UTF-8 text.
    content_type = "text/plain; charset=utf-8"

    def __init__(self, *, v3: bool = True, max_batch_total_tokens: int = 16000) -> None:
        super().__init__()
        self.v3 = v3
        self.max_batch_total_tokens = max_batch_total_tokens
        self.queue_size = 0
        self.batch_size = 0
        self.batch_max_tokens = 0
        self.requests = 0

    def set(self, *, queue: Optional[int] = None, batch_size: Optional[int] = None,
            batch_max_tokens: Optional[int] = None) -> None:
        with self._lock:
            if queue is not None:
                self.queue_size = queue
            if batch_size is not None:
                self.batch_size = batch_size
            if batch_max_tokens is not None:
                self.batch_max_tokens = batch_max_tokens

    def render(self) -> str:
        def gauge(name: str, help_text: str, value: float) -> List[str]:
            return _family(name, help_text, "gauge", [({}, value)], number=_rust_number)

        lines: List[str] = []
        lines += _family("tgi_request_count", "Total number of requests", "counter", [({}, self.requests)],
                         number=_rust_number)
        lines += gauge("tgi_batch_current_size", "Current batch size", self.batch_size)
        lines += gauge("tgi_queue_size", "Current queue size", self.queue_size)
        lines += gauge("tgi_batch_current_max_tokens", "Maximum tokens for the current batch", self.batch_max_tokens)
        if self.v3:
            # Set once at warm-up by the v3 backend; described under another name.
            lines += ["# TYPE tgi_batch_max_total_tokens gauge",
                      f"tgi_batch_max_total_tokens {_rust_number(self.max_batch_total_tokens)}"]
        return "\n".join(lines) + "\n"


def set_reference_load(vllm: "VLLMServer", vllm_old: "VLLMServer", llama: "LlamaCppServer",
                       sglang: "SGLangServer", tgi: "TGIServer") -> None:
    """The load the local-server tests start from, one server of each kind.

    Normalized (local_server_rules.yml, and the embedded scraper alike): queue depth
    vLLM 5 (two engines), old vLLM 1, llama.cpp 2, SGLang 5 (DP ranks summed, not TP
    ranks nor the priority breakdown), TGI 3; running 12, 4, 4, 14, 6; KV cache 0.625
    (the fuller engine), 0.5, none, 0.75, 0.25 (4000 of 16000 batch tokens).
    ``vllm`` has two engines, ``sglang`` two DP ranks with priority scheduling,
    ``tgi`` a 16000-token budget.
    """
    vllm.set(engine=0, waiting=2, running=5, kv_cache_usage=0.25)
    vllm.set(engine=1, waiting=3, running=7, kv_cache_usage=0.625)
    vllm_old.set(waiting=1, running=4, kv_cache_usage=0.5)
    llama.set(deferred=2, processing=4)
    sglang.set(dp_rank=0, queue=4, running=8, token_usage=0.5, queue_by_priority={0: 3, 1: 1})
    sglang.set(dp_rank=1, queue=1, running=6, token_usage=0.75)
    tgi.set(queue=3, batch_size=6, batch_max_tokens=4000)
