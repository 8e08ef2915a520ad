"""local_server_rules.yml: local model servers' load signals under dualtrack's names.

What is proven here, and how:

- ``promtool check rules`` accepts the rules and ``promtool test rules``
  passes their unit tests (tests/promtool/local_server_rules_test.yml, also
  run with every other promtool test by tests/test_prometheus_rules.py);
  every rule, server by server, is covered there.
- The rules record only the five normalized names, each with its server's
  ``server`` label and the target's ``instance`` and ``job``.
- prometheus.yml lists the rules, and its commented scrape jobs, once
  uncommented, are a valid configuration with one job per server.
- docs/local-servers.md names every normalized series and every source
  metric the rules read, and its slot declaration is a valid rule file.
- On a real Prometheus (started here on a random loopback port), scraping
  fake servers that serve each server's real exposition format, names and
  labels (tests/support/model_servers.py): every normalized series has the
  right value and labels (and none where the server has no such signal),
  follows the fake servers' queues when they change, and preemptions show
  as a rate; and the adapter's PromQL source reads them, so the adaptive
  strategy gives local traffic back on a queue while latency is normal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest
import yaml

from support.model_servers import (
    LlamaCppServer,
    ModelServerFake,
    SGLangServer,
    TGIServer,
    VLLMServer,
    set_reference_load,
)
from support.prometheus import PrometheusServer, Samples, promtool

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "local_server_rules.yml"
UNIT_TESTS = ROOT / "tests" / "promtool" / "local_server_rules_test.yml"
PROMETHEUS_YML = ROOT / "prometheus.yml"
DOCS = ROOT / "docs" / "local-servers.md"
PROMETHEUS_DOCS = ROOT / "docs" / "prometheus.md"

QUEUE = "dualtrack:local_server_queue_depth"
RUNNING = "dualtrack:local_server_running"
SLOTS = "dualtrack:local_server_slots"
KV = "dualtrack:local_server_kv_cache_usage_ratio"
PREEMPTIONS = "dualtrack:local_server_preemptions:rate1m"
NAMES = {QUEUE, RUNNING, SLOTS, KV, PREEMPTIONS}
SERVERS = {"vllm", "llamacpp", "sglang", "tgi"}
SOURCE_METRIC = re.compile(r"(?<![\w:])((?:vllm|llamacpp|sglang):[a-z_]+|tgi_[a-z_]+)(?![\w:])")


def _rules() -> List[Dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


# --------------------------------------------------------------------------- promtool


def test_promtool_accepts_the_rules_and_passes_their_unit_tests():
    checked = promtool("check", "rules", str(RULES), check=True)
    assert f"{len(_rules())} rules found" in checked.stdout
    tested = promtool("test", "rules", str(UNIT_TESTS), check=True)
    assert "SUCCESS" in tested.stdout and "FAILED" not in tested.stdout + tested.stderr
    # tests/test_prometheus_rules.py runs every file there, this one included.
    assert UNIT_TESTS.parent == ROOT / "tests" / "promtool" and UNIT_TESTS.suffix == ".yml"


def test_every_rule_is_unit_tested_for_its_server():
    tested: Set[Tuple[str, str]] = set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for expr_test in case.get("promql_expr_test", []):
            for sample in expr_test.get("exp_samples") or []:
                match = re.match(r'([\w:]+)\{.*\bserver="(\w+)"', sample["labels"])
                if match:
                    tested.add((match.group(1), match.group(2)))
    recorded = {(r["record"], r["labels"]["server"]) for r in _rules()}
    assert recorded - tested == set(), "rules without a hand-worked expected sample"
    for server in SERVERS:
        assert any(s == server and name == KV for name, s in tested), f"{server}: KV-cache rule untested"


def test_rules_record_the_normalized_names_per_server_keeping_instance_and_job():
    seen: Set[Tuple[str, str]] = set()
    for rule in _rules():
        name, expr, labels = rule["record"], rule["expr"], rule.get("labels", {})
        assert name in NAMES - {SLOTS}, f"{name}: not a normalized name (slots are declared, not recorded here)"
        assert set(labels) == {"server"} and labels["server"] in SERVERS, name
        assert (name, labels["server"]) not in seen, f"{name} recorded twice for {labels['server']}"
        seen.add((name, labels["server"]))
        # The outer aggregation keeps exactly the target's labels.
        assert re.match(r"\s*(clamp\(\s*)?(sum|max) by \(instance, job\)", expr), f"{name}: {expr}"
        windows = set(re.findall(r"\[(\w+)\]", expr))
        assert windows == ({"1m"} if name == PREEMPTIONS else set()), f"{name}: windows {windows}"
        sources = {m.group(1) for m in SOURCE_METRIC.finditer(expr)}
        prefix = {"vllm": "vllm:", "llamacpp": "llamacpp:", "sglang": "sglang:", "tgi": "tgi_"}[labels["server"]]
        assert sources and all(s.startswith(prefix) for s in sources), f"{name}: reads {sources}"
    assert {s for _, s in seen} == SERVERS


# --------------------------------------------------------------------------- prometheus.yml


def _uncommented_scrape_examples() -> List[str]:
    """The commented local-server jobs at the end of prometheus.yml, as YAML lines."""
    text = PROMETHEUS_YML.read_text()
    marker = text.index("local model servers")
    lines = text[marker:].splitlines()[1:]
    # "  # - job_name: ..." and "  #   static_configs:" are configuration;
    # "  # vLLM (...)" and the like are prose.
    return ["  " + line[4:] for line in lines if re.match(r"  # ( |-)", line)]


def test_prometheus_yml_lists_the_rules_and_its_commented_jobs_are_valid(tmp_path: Path):
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert "local_server_rules.yml" in config["rule_files"]

    examples = _uncommented_scrape_examples()
    uncommented = yaml.safe_load(PROMETHEUS_YML.read_text() + "\n".join(examples) + "\n")
    jobs = {c["job_name"]: c for c in uncommented["scrape_configs"]}
    assert SERVERS <= set(jobs), f"prometheus.yml has commented jobs for {sorted(set(jobs) & SERVERS)} only"
    for server in SERVERS:
        assert jobs[server].get("metrics_path", "/metrics") == "/metrics"
    # Rule files by absolute path, so the copy checks the real ones.
    uncommented["rule_files"] = [str(ROOT / f) for f in uncommented["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(uncommented, sort_keys=False))
    result = promtool("check", "config", str(path), check=True)
    assert "SUCCESS" in result.stdout


# --------------------------------------------------------------------------- docs


def _slot_declaration() -> str:
    """The rule file docs/local-servers.md shows in its "Slots" section."""
    section = DOCS.read_text().split("\n## Slots\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_docs_name_every_series_and_every_source_metric():
    text = DOCS.read_text()
    for name in NAMES:
        assert f"`{name}`" in text, f"docs/local-servers.md does not name {name}"
    for rule in _rules():
        for source in SOURCE_METRIC.findall(rule["expr"]):
            assert f"`{source}`" in text, f"docs/local-servers.md does not say where {source} comes from"
    assert "https://github.com/vllm-project/vllm/issues/49538" in text
    assert "## Ollama" in text and "/api/ps" in text
    assert "(local-servers.md)" in PROMETHEUS_DOCS.read_text()


def test_the_documented_slot_declaration_is_a_valid_rule_file(tmp_path: Path):
    path = tmp_path / "slots.yml"
    path.write_text(_slot_declaration())
    promtool("check", "rules", str(path), check=True)
    (rule,) = [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    assert rule["record"] == SLOTS and set(rule["labels"]) == {"server", "instance", "job"}


# --------------------------------------------------------------------------- a real Prometheus


@dataclass
class LocalStack:
    prom: PrometheusServer
    vllm: VLLMServer        # a current release, two data-parallel engines
    vllm_old: VLLMServer    # a release before 0.9: the old KV-cache name
    llama: LlamaCppServer   # a current build: no KV-cache gauge
    sglang: SGLangServer    # two DP ranks of two TP ranks each, all reporting, priority scheduling
    tgi: TGIServer          # the v3 backend, 16000 tokens of budget

    def job(self, fake: ModelServerFake) -> str:
        return fake.server  # one scrape job per kind of server, named for it

    def key(self, fake: ModelServerFake) -> Tuple[str, str, str]:
        return (fake.server, self.job(fake), fake.address)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    fakes: List[ModelServerFake] = []
    prom = None
    try:
        vllm = VLLMServer(engines=2)
        vllm_old = VLLMServer(model_name="Qwen/Qwen2.5-7B-Instruct", legacy_kv_name=True)
        llama = LlamaCppServer()
        sglang = SGLangServer(dp_ranks=2, tp_size=2, all_schedulers=True, priority_scheduling=True)
        tgi = TGIServer(max_batch_total_tokens=16000)
        for fake in (vllm, vllm_old, llama, sglang, tgi):
            fakes.append(fake.start())
        set_reference_load(vllm, vllm_old, llama, sglang, tgi)

        workdir = tmp_path_factory.mktemp("local-servers")
        slots = workdir / "slots.yml"
        # The documented declaration, for this test's llama.cpp target.
        slots.write_text(_slot_declaration().replace("llama:8080", llama.address))
        targets = [("vllm", vllm.address), ("vllm", vllm_old.address), ("llamacpp", llama.address),
                   ("sglang", sglang.address), ("tgi", tgi.address)]
        prom = PrometheusServer(workdir / "prometheus", targets=targets, rule_files=[RULES, slots])
        prom.start()
        prom.wait_for_targets_up(len(targets), timeout=30)
        yield LocalStack(prom, vllm, vllm_old, llama, sglang, tgi)
    finally:
        if prom is not None:
            prom.close()
        for started in fakes:
            started.stop()


def _by_target(samples: Samples) -> Dict[Tuple[str, str, str], float]:
    out = {}
    for labels, value in samples:
        assert set(labels) == {"__name__", "server", "instance", "job"}, f"labels {labels}"
        out[(labels["server"], labels["job"], labels["instance"])] = value
    return out


def _wait_values(stack: LocalStack, name: str, want: Dict[Tuple[str, str, str], float],
                 timeout: float = 30.0) -> None:
    stack.prom.wait_for(name, lambda samples: _by_target(samples) == want, timeout=timeout)


def test_every_normalized_series_has_the_servers_value_and_labels(stack: LocalStack):
    s = stack
    _wait_values(s, QUEUE, {
        s.key(s.vllm): 5,        # 2 + 3: two engines
        s.key(s.vllm_old): 1,
        s.key(s.llama): 2,
        s.key(s.sglang): 5,      # 4 + 1: DP ranks summed, not TP ranks, not the priority breakdown
        s.key(s.tgi): 3,
    })
    _wait_values(s, RUNNING, {
        s.key(s.vllm): 12,
        s.key(s.vllm_old): 4,
        s.key(s.llama): 4,
        s.key(s.sglang): 14,
        s.key(s.tgi): 6,
    })
    # Current llama.cpp builds have no KV-cache gauge: no series, not 0.
    _wait_values(s, KV, {
        s.key(s.vllm): 0.625,    # the fuller engine
        s.key(s.vllm_old): 0.5,  # vllm:gpu_cache_usage_perc
        s.key(s.sglang): 0.75,
        s.key(s.tgi): 0.25,      # 4000 reserved tokens of 16000
    })
    # Two scrapes into the window, nothing preempted yet; llama.cpp and TGI have no counter.
    _wait_values(s, PREEMPTIONS, {s.key(s.vllm): 0, s.key(s.vllm_old): 0, s.key(s.sglang): 0})
    # Declared, not scraped: the documented rule, beside the scraped series.
    _wait_values(s, SLOTS, {s.key(s.llama): 4})
    # The share of slots in use: the series match on all three labels.
    (labels, utilisation), = s.prom.wait_for(f"{RUNNING} / {SLOTS}")
    assert labels == {"server": "llamacpp", "job": "llamacpp", "instance": s.llama.address}
    assert utilisation == 1.0


def test_the_normalized_queue_follows_the_servers_queue(stack: LocalStack):
    s = stack
    s.vllm.set(engine=1, waiting=9)
    s.llama.set(deferred=6)
    s.sglang.set(dp_rank=1, queue=7)
    s.tgi.set(queue=0, batch_size=2, batch_max_tokens=12000)
    _wait_values(s, QUEUE, {
        s.key(s.vllm): 11,
        s.key(s.vllm_old): 1,
        s.key(s.llama): 6,
        s.key(s.sglang): 11,
        s.key(s.tgi): 0,
    })
    _wait_values(s, KV, {
        s.key(s.vllm): 0.625,
        s.key(s.vllm_old): 0.5,
        s.key(s.sglang): 0.75,
        s.key(s.tgi): 0.75,
    })
    # And back: an emptied queue reads 0, it does not vanish.
    s.vllm.set(engine=0, waiting=0)
    s.vllm.set(engine=1, waiting=0)
    _wait_values(s, QUEUE, {
        s.key(s.vllm): 0,
        s.key(s.vllm_old): 1,
        s.key(s.llama): 6,
        s.key(s.sglang): 11,
        s.key(s.tgi): 0,
    })


# --------------------------------------------------------------------------- the adapter reads them


def test_the_adapter_shifts_traffic_on_queue_depth_while_latency_is_normal(stack: LocalStack):
    """Runs before the preemption test: a recent preemption rate means a full server too.

    The adapter's PromQL source reads the normalized series from this Prometheus; the
    adaptive strategy, given finished calls that are all fast and within target, gives
    local traffic back to the API once the servers queue beyond what its plan explains."""
    from dualtrack.adapter.engine import RuleEngine
    from dualtrack.adapter.prometheus_source import PrometheusSource
    from dualtrack.adapter.promql import PromQLClient
    from dualtrack.adapter.strategy import load_strategies
    from dualtrack.bundled import bundled_dir
    from test_objective import INTERVAL, calls, interval, steady

    s = stack
    for engine in (0, 1):
        s.vllm.set(engine=engine, waiting=0)
    s.vllm_old.set(waiting=0)
    s.llama.set(deferred=0)
    s.sglang.set(dp_rank=0, queue=0)
    s.sglang.set(dp_rank=1, queue=0)
    s.tgi.set(queue=0)
    source = PrometheusSource(PromQLClient(s.prom.url, timeout=5.0), window="2m", interval="30s")

    def fetched(queue: float) -> Any:
        values = source.fetch()
        return values if values.get("local_server_queue_depth", {}) == queue else None

    # Finished calls: local as good as the API, fast (1 s, all within target) and free; under
    # one busy slot of the 4 declared, where Erlang C expects next to no queue.
    counts = steady(calls(12, latency=1.0), calls(12, cost=0.001), "short")
    engine = RuleEngine(load_strategies(bundled_dir("rules")), "adaptive", query_classes=("short",),
                        interval_seconds=INTERVAL)

    def cycle(values: Any, now: float) -> float:
        for name, series in interval(counts).values.items():
            for labels, value in series.items():
                values.set(name, dict(labels), value)
        # A few machine readings Prometheus does not have here (no dualtrack exporter scraped).
        values.set("latency_target_seconds", {}, 5.0)
        return engine.evaluate(values, now).class_overrides().get("short", {}).get(
            "local_bias", engine.routing["local_bias"])

    quiet = s.prom.wait_for("sum(dualtrack:local_server_queue_depth)",
                            lambda samples: bool(samples) and samples[0][1] == 0, timeout=30)
    assert quiet
    values = fetched(0.0)
    assert values is not None, "the adapter does not read the queue Prometheus recorded"
    assert values.get("local_server_slots", {}) == 4  # the declared llama.cpp slots
    assert values.get("local_server_running", {}) is not None
    before = 0.0
    cycles = 12  # the strategy moves local_bias by at most its step per cycle
    for i in range(cycles):
        before = cycle(fetched(0.0) or values, now=INTERVAL * i)
    assert before > 0.8, f"local should carry the short class while nothing queues, got {before}"

    s.vllm.set(engine=1, waiting=20)
    s.prom.wait_for("sum(dualtrack:local_server_queue_depth)",
                    lambda samples: bool(samples) and samples[0][1] == 20, timeout=30)
    queued = fetched(20.0)
    assert queued is not None
    after = cycle(queued, now=INTERVAL * cycles)
    est = engine.estimator
    assert est is not None and est.server_full, (est.server_queue, est.planned_load, est.slots, queued.values)
    assert after < before - 0.05, (before, after)
    s.vllm.set(engine=1, waiting=0)


def test_preemptions_show_as_a_rate(stack: LocalStack):
    s = stack
    _wait_values(s, PREEMPTIONS, {s.key(s.vllm): 0, s.key(s.vllm_old): 0, s.key(s.sglang): 0})
    s.vllm.preempt(engine=1, count=30)
    s.sglang.retract(dp_rank=0, count=30)

    def rising(samples: Samples) -> bool:
        rates = _by_target(samples)
        return rates[s.key(s.vllm)] > 0 and rates[s.key(s.sglang)] > 0

    rates = _by_target(s.prom.wait_for(PREEMPTIONS, rising, timeout=30))
    assert set(rates) == {s.key(s.vllm), s.key(s.vllm_old), s.key(s.sglang)}
    assert rates[s.key(s.vllm_old)] == 0
    # 30 in a 1m window is about 0.5/s; the rate extrapolates, so only its size is checked.
    assert 0 < rates[s.key(s.vllm)] < 2 and 0 < rates[s.key(s.sglang)] < 2

