#!/usr/bin/env python3
"""Run the reliability tests and write docs/reliability.md from their results.

    python tools/reliability_report.py               # run the tests, write docs/reliability.md
    python tools/reliability_report.py --no-run      # rewrite it from the last run's junit XML
    python tools/reliability_report.py -- -x         # extra arguments go to pytest

What runs: the fault suite (tests/test_faults.py), the bad-input tests
(tests/test_fuzz_*.py), the security tests (tests/test_security.py) — each
where it exists — and the older tests listed in ``MAPPED`` below, which
covered some faults and bad inputs before those files did. pytest writes
junit XML (out/reliability-junit.xml, its log beside it); the table rows come
from that XML (pass/fail, time, the ``observed`` properties tests record)
and from the tests' docstrings (read with ``ast``, nothing is imported).

Docstrings: the fault suite's say the fault in the first paragraph and what
must hold in a paragraph starting ``Holds:``; a one-paragraph docstring of
the form ``<input>: <what holds>`` is split at its first top-level colon;
anything else is shown whole.

Load figures come from ``out/load_soak.json`` and ``out/adapter_soak.json``
when they exist (``benchmarks/load_soak.py --json`` and
``benchmarks/adapter_soak.py --json`` write them); the instrumentation
overhead and adapter-cycle figures are linked from docs/benchmarks.md.

Exit status: 0 when every test passed, 1 when some failed or errored (the
report is written either way, with the failures in it), 2 when pytest did
not produce results.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "reliability.md"
JUNIT = ROOT / "out" / "reliability-junit.xml"
PYTEST_LOG = ROOT / "out" / "reliability-pytest.log"
RUN_INFO = ROOT / "out" / "reliability-run.json"  # command, duration and date of the last run, for --no-run
LOAD_FILES = (
    ("Recording under load (16 threads)", ROOT / "out" / "load_soak.json", "benchmarks/load_soak.py"),
    ("Adapter soak against a real Prometheus", ROOT / "out" / "adapter_soak.json", "benchmarks/adapter_soak.py"),
)
#: The figures shown first for each load file: (what, dotted keys, format). A row whose keys are
#: not all in the file is left out (the benchmarks own their JSON); everything is in the full table.
HEADLINES: Dict[str, Tuple[Tuple[str, Tuple[str, ...], str], ...]] = {
    "load_soak.json": (
        ("requests recorded, threads", ("run.requests", "run.threads"), "{:,.0f} from {} threads"),
        ("every request counted exactly once", ("exact",), "{}"),
        ("throughput, 16 threads", ("run.requests_per_second",), "{:,.0f} requests/s"),
        ("throughput, 1 thread", ("baseline_single_thread.requests_per_second",), "{:,.0f} requests/s"),
        ("resident memory growth (target)", ("memory.rss_growth_mb", "target_memory_mb"), "{:.2f} MB (under {:g} MB)"),
        ("traced allocations: growth, peak", ("memory.tracemalloc_growth_mb", "memory.tracemalloc_peak_mb"),
         "{:.2f} MB, {:.2f} MB"),
        ("memory target met", ("memory.target_met",), "{}"),
        ("label values (path, query_class, model) under unbounded input",
         ("run.checks.distinct_label_values.path", "run.checks.distinct_label_values.query_class",
          "run.checks.distinct_label_values.model"), "{}, {}, {}"),
        ("values folded into `other` (path, query_class, model)",
         ("run.checks.folded.path", "run.checks.folded.query_class", "run.checks.folded.model"),
         "{:.0f}, {:.0f}, {:.0f}"),
    ),
    "adapter_soak.json": (
        ("cycles (ok, no data, error)", ("cycles", "results.ok", "results.no_data", "results.error"),
         "{:,} ({}, {}, {})"),
        ("files published", ("published",), "{:,}"),
        ("cycle duration median, p90, max", ("cycle_ms.median", "cycle_ms.p90", "cycle_ms.max"),
         "{:.1f} ms, {:.1f} ms, {:.1f} ms"),
        ("resident memory growth, slope", ("rss_mb.growth", "rss_mb.slope_per_1000_cycles"),
         "{:.2f} MB, {:.3f} MB per 1,000 cycles"),
        ("memory flat (threshold)", ("memory_flat", "flat_threshold_mb"), "{} (growth under {:g} MB)"),
        ("file descriptors first, last", ("fds.first", "fds.last"), "{}, {}"),
        ("threads first, last", ("threads.first", "threads.last"), "{}, {}"),
        ("all checks passed", ("ok",), "{}"),
        ("wall time", ("seconds",), "{:.0f} s"),
    ),
}

FAULTS_FILE = "tests/test_faults.py"
FUZZ_GLOB = "tests/test_fuzz_*.py"
SECURITY_FILE = "tests/test_security.py"


@dataclass(frozen=True)
class Mapped:
    """An older test that covers a fault or a bad input, described here (most have no docstring)."""

    nodeid: str
    section: str  # "faults", "bad_input" or "security"
    fault: str
    holds: str


# Older tests that already covered a fault or a bad input before the dedicated files; the
# fault suite does not repeat them. Keep the descriptions short: the test is the detail.
MAPPED: Tuple[Mapped, ...] = (
    # --- Prometheus and the adapter
    Mapped("tests/test_adapter.py::test_prometheus_down_keeps_the_last_preferences_backs_off_and_recovers",
           "faults", "Prometheus killed under an in-process adapter, then restarted",
           "cycles fail as `unavailable`, backoff 1, 2, 4 s, the file is not republished, the first good "
           "cycle publishes sequence 2"),
    Mapped("tests/test_adapter.py::test_a_bad_rules_edit_keeps_the_last_good_rules_until_fixed",
           "faults", "a rule file edited into an invalid rule (in-process adapter)",
           "cycles go on with the last good rules, reload success 0, error logged once with file:line and a "
           "did-you-mean hint, the fix is picked up"),
    Mapped("tests/test_adapter.py::test_a_bad_user_signal_is_isolated",
           "faults", "one user-defined signal with broken PromQL",
           "that signal is reported as bad_query, the batched built-in signals still answer"),
    Mapped("tests/test_adapter.py::test_no_data_is_not_zero",
           "faults", "Prometheus with no data at all",
           "the cycle is `no_data`, nothing fires, preferences stay at the baseline"),
    Mapped("tests/test_adapter.py::test_sigterm_stops_between_cycles_and_leaves_a_whole_file",
           "faults", "SIGTERM to a running adapter process",
           "exit 0 between cycles, a whole file, no temp files"),
    # --- the PromQL client
    Mapped("tests/test_promql.py::test_killed_prometheus_is_backend_unavailable",
           "faults", "the client's Prometheus is killed", "SourceUnavailable"),
    Mapped("tests/test_promql.py::test_slow_answer_is_query_timeout",
           "faults", "an answer slower than the timeout", "QueryTimeout, within the timeout"),
    Mapped("tests/test_promql.py::test_trickled_answer_is_cut_at_the_timeout",
           "faults", "an answer trickled byte by byte", "cut at the whole-answer deadline: QueryTimeout"),
    Mapped("tests/test_promql.py::test_503_is_retried_then_backend_unavailable",
           "faults", "HTTP 503 on every attempt", "retried with backoff, then SourceUnavailable"),
    Mapped("tests/test_promql.py::test_connection_reset_is_backend_unavailable",
           "faults", "connection reset mid-request", "SourceUnavailable"),
    Mapped("tests/test_promql.py::test_connection_refused",
           "faults", "nothing listening", "SourceUnavailable, fast"),
    Mapped("tests/test_promql.py::test_api_errors_map_to_source_errors",
           "faults", "every Prometheus API errorType and HTTP status", "mapped to its SourceError type"),
    Mapped("tests/test_promql.py::test_errors_that_retrying_cannot_fix_are_not_retried",
           "faults", "bad query, auth failure", "not retried"),
    Mapped("tests/test_promql.py::test_deadline_stops_retries",
           "faults", "retries that would pass the cycle's deadline", "not attempted"),
    Mapped("tests/test_promql.py::test_malformed_answers_are_bad_response",
           "bad_input", "malformed PromQL API answers", "BadResponse, never another exception"),
    Mapped("tests/test_promql.py::test_oversize_answer_is_bad_response",
           "bad_input", "an answer over max_response_bytes (with and without Content-Length)",
           "BadResponse, reading stops at the limit"),
    Mapped("tests/test_promql.py::test_parser_returns_a_result_or_bad_response",
           "bad_input", "generated JSON bodies (hypothesis)", "a result or BadResponse"),
    # --- the preferences file
    Mapped("tests/test_preferences.py::test_failed_replace_leaves_no_temp_and_keeps_old_file",
           "faults", "the rename of the new file fails", "no temp file left, the old file intact"),
    Mapped("tests/test_preferences.py::test_failed_write_midway_leaves_no_temp",
           "faults", "a write fails halfway", "no temp file left"),
    Mapped("tests/test_preferences.py::test_parent_is_a_file",
           "faults", "the output folder is a file", "PreferencesError"),
    Mapped("tests/test_preferences.py::test_planted_symlink_at_temp_path_is_not_followed",
           "faults", "a symlink planted at the temp file's path", "not followed, another name is used"),
    Mapped("tests/test_preferences.py::test_symlink_at_target_is_replaced_not_written_through",
           "faults", "the target is a symlink", "replaced, its target untouched"),
    Mapped("tests/test_preferences.py::test_stale_temp_files_are_cleaned_at_construction",
           "faults", "temp files left by a crashed writer", "removed at start once older than 60 s"),
    Mapped("tests/test_preferences.py::test_writes_are_atomic_for_concurrent_readers",
           "faults", "readers polling while a writer publishes continuously", "never a torn read"),
    Mapped("tests/test_preferences.py::test_reader_keeps_last_good_on_bad_file",
           "faults", "the file goes missing, empty, torn, invalid, too large, wrong version",
           "the reader keeps the last good copy, counts the reason"),
    Mapped("tests/test_preferences.py::test_expiry_goes_fresh_stale_then_defaults",
           "faults", "the adapter stops publishing", "fresh, stale, then safe defaults after the grace period"),
    Mapped("tests/test_preferences.py::test_wall_clock_jumping_backwards_does_not_expire",
           "faults", "the wall clock steps back an hour", "no expiry; monotonic age still expires a dead adapter"),
    Mapped("tests/test_preferences.py::test_wall_clock_jumping_forward_expires",
           "faults", "the wall clock steps forward an hour", "expired: safe defaults"),
    Mapped("tests/test_preferences.py::test_any_bytes_never_break_the_reader",
           "bad_input", "arbitrary bytes as the preferences file (hypothesis)",
           "the reader keeps the last good copy and never raises"),
    # --- the machine
    Mapped("tests/test_resources.py::test_nvml_failing_mid_run_backs_off_then_recovers",
           "faults", "NVML stops answering mid-run", "GPUs absent, errors counted, re-init with backoff, recovery"),
    Mapped("tests/test_resources.py::test_nvml_init_failure_backs_off_exponentially",
           "faults", "nvmlInit fails", "retried with exponential backoff, not every sample"),
    Mapped("tests/test_resources.py::test_no_nvidia_driver_is_absent_not_an_error",
           "faults", "no NVIDIA driver", "GPUs absent, not counted as an error"),
    Mapped("tests/test_resources.py::test_battery_gauges_follow_the_battery_and_vanish_with_it",
           "faults", "the battery disappears", "its gauges disappear"),
    Mapped("tests/test_resources.py::test_battery_api_failing_is_absent",
           "faults", "the battery API fails", "battery absent, error counted"),
    Mapped("tests/test_resources.py::test_monitored_pids_are_summed_and_a_vanished_one_dropped",
           "faults", "a monitored process exits", "dropped, counted, logged"),
    Mapped("tests/test_resources.py::test_psutil_failing_falls_back_to_proc_and_loadavg",
           "faults", "psutil reads fail", "/proc and load-average fallbacks, each failure counted"),
    Mapped("tests/test_resources.py::test_everything_failing_gives_none_and_keeps_going",
           "faults", "psutil, /proc, getrusage, loadavg and NVML all fail",
           "every field absent, every resource's errors counted, the monitor goes on"),
    # --- ports, the request path
    Mapped("tests/test_exposition.py::test_a_busy_port_is_a_clear_error_not_a_thread_traceback",
           "faults", "serve_metrics / DualTrackOptimizer.start() on a busy port",
           "MetricsPortInUse naming the address, no thread left, no traceback"),
    Mapped("tests/test_exposition.py::test_missing_tls_files_are_a_config_error",
           "faults", "TLS certificate files missing", "a ConfigError naming the setting"),
    Mapped("tests/test_exposition.py::test_tls_certificate_that_cannot_be_loaded_is_a_config_error",
           "faults", "a TLS certificate file that is not a certificate",
           "a ConfigError naming metrics_tls_certfile, not an error about the address"),
    Mapped("tests/test_exposition.py::test_the_adapter_process_serves_its_metrics_over_tls_with_client_certificates",
           "security", "`dualtrack adapter --metrics-tls-cert-file/--metrics-tls-key-file/"
           "--metrics-tls-client-ca-file`",
           "its /metrics answers over HTTPS with a client certificate only (no certificate, or plain HTTP: "
           "refused); a certificate without its key is a one-line error naming the flags, exit status 2"),
    Mapped("tests/test_optimizer.py::test_orphaned_starts_expire_after_the_ttl_and_are_counted",
           "faults", "requests started and never completed", "expired after the TTL, counted"),
    Mapped("tests/test_optimizer.py::test_sweeps_racing_completions_on_many_threads_keep_the_books_exact",
           "faults", "8 threads start and complete 24,000 requests (one in ten never completed) while the "
           "clock runs and sweeps of the lock-free in-flight table race the completions",
           "every start ends exactly once, completed or expired; table, gauge and counters agree; no internal error"),
    Mapped("tests/test_optimizer.py::test_the_inflight_table_is_bounded",
           "faults", "more starts in flight than max_inflight_tracked", "the oldest are dropped and counted"),
    Mapped("tests/test_optimizer.py::test_a_failing_adaptation_cycle_keeps_the_current_preferences",
           "faults", "an embedded adaptation cycle raises", "the current preferences stay, the error is counted"),
    Mapped("tests/test_optimizer.py::test_bad_arguments_and_internal_failures_never_raise",
           "faults", "internal failures on the request path", "never raised into the caller, counted"),
    Mapped("tests/test_optimizer.py::test_recommendations_never_raise",
           "faults", "recommendations while internals fail", "safe defaults, never an exception"),
    Mapped("tests/test_optimizer.py::test_every_bad_result_field_is_rejected_counted_and_never_raises",
           "bad_input", "each bad field of a completion result", "rejected, counted by reason, never raised"),
    Mapped("tests/test_optimizer.py::test_huge_and_odd_values_never_raise_and_stay_bounded",
           "bad_input", "huge and odd values in results", "never raised, label sets bounded"),
    Mapped("tests/test_adapter.py::test_credentials_never_reach_logs_or_files",
           "security", "Prometheus refuses the adapter's bearer token (which it echoes back)",
           "exit 1 with an auth error; the token is in no log line and no file"),
)

SECTIONS = (
    ("faults", "Faults"),
    ("bad_input", "Bad input"),
    ("security", "Security"),
)


# ------------------------------------------------------------------ test results


@dataclass
class Case:
    file: str  # tests/test_x.py
    function: str  # test_x
    param: Optional[str]  # the [id] of a parametrized case
    status: str  # passed, failed, error, skipped
    seconds: float
    message: str = ""
    observed: List[str] = field(default_factory=list)


def _file_of(classname: str, name: str) -> str:
    # junit classname is the dotted module path (plus a class for methods): tests.test_faults
    parts = classname.split(".")
    while parts and not parts[-1].startswith("test_"):
        parts.pop()
    return "/".join(parts) + ".py" if parts else classname


def read_junit(path: Path) -> List[Case]:
    root = ET.parse(path).getroot()
    cases = []
    for tc in root.iter("testcase"):
        name = tc.get("name", "")
        function, _, param = name.partition("[")
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = tc.find(tag)
            if child is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (child.get("message") or "").strip()
                break
        observed = [p.get("value", "") for p in tc.iter("property") if p.get("name") == "observed"]
        cases.append(Case(_file_of(tc.get("classname", ""), name), function, param[:-1] if param else None,
                          status, float(tc.get("time") or 0.0), message, observed))
    return cases


# ------------------------------------------------------------------ docstrings


def docstrings(path: Path) -> Dict[str, str]:
    """Test function name -> docstring, read without importing the module."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return {}
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            doc = ast.get_docstring(node)
            if doc:
                out[node.name] = doc
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _top_level_colon(text: str) -> int:
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == ":" and depth == 0 and text[i + 1:i + 2] == " ":
            return i
    return -1


def split_doc(doc: Optional[str], function: str) -> Tuple[str, str]:
    """(fault or input, what holds) from a docstring; see the module docstring for the shapes."""
    if not doc:
        return humanize(function.removeprefix("test_")), ""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc) if p.strip()]
    holds = next((p for p in paragraphs if p.startswith("Holds:")), None)
    if holds is not None:
        fault = next(p for p in paragraphs if p is not holds)
        return _capital(_one_line(re.sub(r"^Fault:\s*", "", fault))), _one_line(holds[len("Holds:"):])
    first = _one_line(paragraphs[0])
    rest = " ".join(_one_line(p) for p in paragraphs[1:])
    cut = _top_level_colon(first)
    if cut > 0:
        return first[:cut], _one_line(first[cut + 1:] + " " + rest)
    return first, rest


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def humanize(ident: str) -> str:
    return ident.replace("_", " ").strip()


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return _one_line(text).replace("|", "\\|")


# ------------------------------------------------------------------ rows


@dataclass
class Row:
    section: str
    file: str
    function: str
    fault: str
    holds: str
    cases: List[Case]
    mapped: bool = False

    @property
    def status(self) -> str:
        if not self.cases:
            return "not run"
        bad = [c for c in self.cases if c.status in ("failed", "error")]
        if bad:
            return f"**FAIL** ({len(bad)} of {len(self.cases)})"
        if all(c.status == "skipped" for c in self.cases):
            return "skipped"
        passed = sum(c.status == "passed" for c in self.cases)
        return "pass" if len(self.cases) == 1 else f"pass ({passed} cases)"

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.cases)


def section_of_file(file: str) -> Optional[str]:
    if file == FAULTS_FILE:
        return "faults"
    if re.fullmatch(r"tests/test_fuzz_[^/]*\.py", file):
        return "bad_input"
    if file == SECURITY_FILE:
        return "security"
    return None


def build_rows(cases: Sequence[Case]) -> List[Row]:
    by_test: Dict[Tuple[str, str], List[Case]] = {}
    for case in cases:
        by_test.setdefault((case.file, case.function), []).append(case)
    docs: Dict[str, Dict[str, str]] = {}
    rows: List[Row] = []
    mapped = {tuple(m.nodeid.split("::", 1)): m for m in MAPPED}
    for (file, function), group in by_test.items():
        m = mapped.get((file, function))
        if m is not None:
            rows.append(Row(m.section, file, function, m.fault, m.holds, group, mapped=True))
            continue
        section = section_of_file(file)
        if section is None:
            continue
        if file not in docs:
            docs[file] = docstrings(ROOT / file)
        fault, holds = split_doc(docs[file].get(function), function)
        rows.append(Row(section, file, function, fault, holds, group))
    for (file, function), m in mapped.items():
        if (file, function) not in by_test:
            rows.append(Row(m.section, file, function, m.fault, m.holds, [], mapped=True))
    return rows


# ------------------------------------------------------------------ running pytest


def selection() -> Tuple[List[str], List[str]]:
    """(files, node ids) to run; mapped tests whose function no longer exists are left out."""
    files = [FAULTS_FILE] if (ROOT / FAULTS_FILE).exists() else []
    files += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(FUZZ_GLOB))
    files += [SECURITY_FILE] if (ROOT / SECURITY_FILE).exists() else []
    nodeids = []
    names: Dict[str, set] = {}
    for m in MAPPED:
        file, function = m.nodeid.split("::", 1)
        if file not in names:
            names[file] = set(docstrings_or_names(ROOT / file))
        if function in names[file] and file not in files:
            nodeids.append(m.nodeid)
    return files, nodeids


def docstrings_or_names(path: Path) -> Iterable[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return []
    return [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def python_for_tests() -> str:
    """This interpreter if it has dualtrack and pytest, else the project's .venv."""
    check = subprocess.run([sys.executable, "-c", "import dualtrack, pytest"], capture_output=True)
    venv = ROOT / ".venv" / "bin" / "python"
    if check.returncode != 0 and venv.exists():
        return str(venv)
    return sys.executable


def run_pytest(targets: Sequence[str], extra: Sequence[str]) -> Tuple[int, float, str]:
    JUNIT.parent.mkdir(parents=True, exist_ok=True)
    if JUNIT.exists():
        JUNIT.unlink()
    python = python_for_tests()
    # xunit1 keeps the tests' "observed" properties valid in the XML (xunit2 has no such element).
    cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
           f"--junitxml={JUNIT}", "-q", *targets, *extra]
    env = dict(os.environ)
    env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    started = time.monotonic()
    with open(PYTEST_LOG, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    shown = [a for a in cmd[3:] if "::" not in a]
    mapped = len(cmd[3:]) - len(shown)
    command = " ".join(["pytest", *shown]).replace(str(ROOT) + os.sep, "")
    return code, time.monotonic() - started, command + (f" + the {mapped} earlier tests in MAPPED" if mapped else "")


# ------------------------------------------------------------------ machine, load figures


def _first_line(cmd: Sequence[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if out.returncode == 0 and text else None


def machine() -> List[Tuple[str, str]]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    os_name = platform.platform()
    try:
        fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        os_name = f"{fields.get('PRETTY_NAME', '').strip(chr(34))}, kernel {platform.release()}"
    except OSError:
        pass
    items = [("CPU", f"{cpu}, {os.cpu_count()} logical CPUs")]
    if memory:
        items.append(("Memory", memory))
    items.append(("OS", os_name))
    python = python_for_tests()
    version = _first_line([python, "-c", "import platform; print(platform.python_version())"])
    items.append(("Python", version or platform.python_version()))
    prom = _first_line(["prometheus", "--version"])
    if prom:
        items.append(("Prometheus", prom.replace("prometheus, version ", "")))
    commit = _first_line(["git", "rev-parse", "--short", "HEAD"])  # read-only
    if commit:
        items.append(("Commit", f"{commit} (plus any uncommitted changes in the working tree)"))
    return items


def _flatten(value: Any, prefix: str = "") -> List[Tuple[str, str]]:
    if isinstance(value, dict):
        out: List[Tuple[str, str]] = []
        for key, item in value.items():
            out += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value) and len(value) <= 12:
            return [(prefix, ", ".join(_fmt(v) for v in value))]
        if all(isinstance(v, dict) for v in value) and len(value) <= 12:
            out = []
            for i, item in enumerate(value):
                out += _flatten(item, f"{prefix}[{i}]")
            return out
        return [(prefix, f"{len(value)} values")]
    return [(prefix, _fmt(value))]


_MISSING = object()


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def load_figures() -> List[str]:
    lines = []
    for title, path, script in LOAD_FILES:
        rel = path.relative_to(ROOT)
        lines.append(f"### {title}")
        lines.append("")
        if not path.exists():
            lines.append(f"Not measured in this run: `{rel}` does not exist (`python {script} --json {rel}` "
                         "writes it).")
            lines.append("")
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            lines.append(f"`{rel}` could not be read: {cell(str(err))}.")
            lines.append("")
            continue
        when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"From `{rel}` (written {when} by `{script}`; not rerun by this script):")
        lines.append("")
        headline = []
        for what, keys, fmt in HEADLINES.get(path.name, ()):
            values = [_lookup(data, key) for key in keys]
            if all(v is not _MISSING for v in values):
                try:
                    headline.append((what, fmt.format(*values)))
                except (TypeError, ValueError):
                    headline.append((what, ", ".join(_fmt(v) for v in values)))
        if headline:
            lines.append("| figure | value |")
            lines.append("|---|---|")
            for what, text in headline:
                lines.append(f"| {cell(what)} | {cell(text)} |")
            lines.append("")
        flat = _flatten(data)
        lines.append(f"<details><summary>All {len(flat)} figures in {rel}</summary>")
        lines.append("")
        lines.append("| key | value |")
        lines.append("|---|---|")
        for key, value in flat:
            lines.append(f"| `{cell(key)}` | {cell(value)[:300]} |")
        lines.append("")
        lines.append("</details>")
        lines.append("")
    return lines


def benchmark_links() -> List[str]:
    path = ROOT / "docs" / "benchmarks.md"
    headings: List[Tuple[str, str]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^(#{2,4})\s+(.*)$", line)
            if m:
                title = m.group(2).strip()
                anchor = re.sub(r"[^\w\- ]", "", title.lower()).strip().replace(" ", "-")
                headings.append((title, anchor))
    out = []
    for what, keywords, script in (
            ("Instrumentation overhead (cost per recorded request)", ("overhead",), "benchmarks/overhead.py"),
            ("Adapter cycle (duration per mode, queries per cycle)", ("adapter cycle",),
             "benchmarks/adapter_cycle.py")):
        found = next(((t, a) for t, a in headings if any(k in t.lower() for k in keywords)), None)
        if found:
            out.append(f"- {what}: [benchmarks.md — {found[0]}](benchmarks.md#{found[1]})")
        else:
            out.append(f"- {what}: not in [benchmarks.md](benchmarks.md) yet (`python {script}` measures it)")
    return out


# ------------------------------------------------------------------ the document

STATIC_FINDINGS = """\
## Bugs these tests found (fixed)

- **A Prometheus answering garbage kept the preferences fresh.** When every
  query failed with a bad answer (malformed JSON, an HTML page with 200, wrong
  types, an oversize answer, every query rejected), `PrometheusSource.fetch`
  fell back to one query per signal, recorded each failure and returned empty
  values: the cycle counted as `no_data`, published fresh baseline preferences
  and reset `consecutive_failures`, so the expiry policy never saw the outage.
  Now, if not one built-in signal is answered, `fetch` raises the first error
  and the cycle fails like any other outage (`src/dualtrack/adapter/prometheus_source.py`).
  Found by `test_prometheus_answering_badly_is_counted_by_type_and_recovered_from`.
- **A wall clock set back froze the embedded adapter on old traffic.** The
  embedded source kept every record stamped at or after `now - window`; after a
  step back of an hour, the records made before the step (now stamped in the
  future) stayed in every window for that hour, outvoting fresh traffic (a
  track that had become fast still read as slow) and giving negative spans.
  Records stamped after `now` are now out of the window
  (`src/dualtrack/adapter/embedded.py`). Found by
  `test_wall_clock_jumps_and_the_embedded_adapter`.
- **Hostile YAML crashed or hung the loaders.** Nested aliases ("billion
  laughs") made the line tracker exponential; a NUL byte, a timestamp-shaped
  `2020-13-45`, `!!int abc` or a 5,000-digit integer escaped as ValueError,
  OverflowError or an error that could not even print its value; a mapping
  with keys 0, "" and None made jsonschema's error ranking raise TypeError.
  All are now ConfigErrors naming the file (`src/dualtrack/_yaml.py`,
  `src/dualtrack/_schema.py`). Found by
  `test_hostile_yaml_documents_are_config_errors_quickly` and
  `test_mutated_rule_files_load_or_fail_with_a_config_error_naming_the_file`.
- **Smaller ones from the same fuzzing.** A caller's `estimated_tokens` of
  10**400 overflowed the complexity score (an internal error instead of a
  recommendation); one histogram series with a non-numeric `le` failed the
  whole fetch; a signal name ending in a newline passed `re.match(...$)`;
  an unhashable request id was an internal error rather than counted bad
  input. Found by the tests in `tests/test_fuzz_inputs.py`.
"""

STATIC_LIMITS = """\
## What these tests do not cover

- **A real full or read-only disk.** Tests run as root (permissions do not stop
  root) and cannot fill a real file system safely; `ENOSPC`, `EROFS`, `EIO` and
  `EDQUOT` are injected into the writer's `os` calls in-process. The paths taken
  are the same; the kernel's own behaviour (e.g. a rename on a full disk) is not.
- **Real NVIDIA hardware and batteries.** NVML and psutil are fakes
  (tests/fakes); a GPU that hangs inside the driver (a call that never returns)
  is not simulated: the monitor would be stuck in that call (its `stop` gives up
  after 5 s and says so) while requests stay unaffected.
- **Time.** Wall-clock jumps are driven through `VirtualClock.set_wall`, not by
  stepping the machine's clock. The adapter process itself uses the system clock.
- **Machine-level faults** (the router OOM-killed, network partitions, DNS
  failures, a remote Prometheus behind a real proxy) are not in the suite: the
  network faults tried are a dead, slow or misbehaving Prometheus on loopback.
- **Many routers at once.** One reader thread (or one optimizer) reads the file in
  these tests; many router processes on one file are not exercised here.
- **Free-threaded Python.** The request hot path takes no lock: it relies on
  single dict and deque operations being atomic, as they are under CPython's
  GIL and, per object, on free-threaded builds (where the sliding windows take
  their lock again). Every test ran on CPython 3.11 with the GIL; no
  free-threaded build was tried.
- The adapter runs its rule reload inside the cycle, so a reload's cost (about
  45 ms for the bundled rules here) comes out of the query budget of that cycle
  (0.8 x interval); harmless at real intervals (30 s), visible below ~0.1 s.
"""


def render(rows: List[Row], cases: List[Case], run_info: Dict[str, Any]) -> str:
    now = run_info["date"]
    out: List[str] = []
    out.append("# Reliability and security: faults survived, bad input refused")
    out.append("")
    out.append("<!-- Generated by tools/reliability_report.py; edit the script or the tests, not this file. -->")
    out.append("")
    out.append(f"Regenerate with `python tools/reliability_report.py` (about {run_info['minutes']}; "
               "`--no-run` rewrites this page from the last run's results). Tests run "
               f"{now} on:")
    out.append("")
    for key, value in machine():
        out.append(f"- {key}: {value}")
    out.append("")
    out.append(f"Command: `{run_info['command']}`. Log: `{PYTEST_LOG.relative_to(ROOT)}`; results: "
               f"`{JUNIT.relative_to(ROOT)}`.")
    out.append("")

    counts = {s: 0 for s in ("passed", "failed", "error", "skipped")}
    for c in cases:
        counts[c.status] = counts.get(c.status, 0) + 1
    fault_seconds = sum(c.seconds for c in cases if c.file == FAULTS_FILE)
    out.append("## Summary")
    out.append("")
    out.append("| section | tests | cases | passed | failed | skipped | time |")
    out.append("|---|---|---|---|---|---|---|")
    for key, title in SECTIONS:
        srows = [r for r in rows if r.section == key]
        scases = [c for r in srows for c in r.cases]
        out.append(f"| {title} | {len(srows)} | {len(scases)} | "
                   f"{sum(c.status == 'passed' for c in scases)} | "
                   f"{sum(c.status in ('failed', 'error') for c in scases)} | "
                   f"{sum(c.status == 'skipped' for c in scases)} | {sum(c.seconds for c in scases):.1f} s |")
    out.append("")
    verdict = ("every case passed" if counts["failed"] == counts["error"] == 0
               else f"**{counts['failed'] + counts['error']} case(s) failed** (see the tables)")
    out.append(f"{len(cases)} cases in {run_info['seconds']:.0f} s: {verdict}. The fault suite "
               f"({FAULTS_FILE}) took {fault_seconds:.1f} s of test time.")
    missing = [f for f in (FUZZ_GLOB, SECURITY_FILE) if not list(ROOT.glob(f))]
    if missing:
        out.append(f"Not in this run because they do not exist yet: {', '.join(f'`{m}`' for m in missing)}.")
    out.append("")

    for key, title in SECTIONS:
        srows = [r for r in rows if r.section == key]
        out.append(f"## {title}")
        out.append("")
        if not srows:
            out.append("No tests in this run.")
            out.append("")
            continue
        for mapped in (False, True):
            group = [r for r in srows if r.mapped == mapped]
            if not group:
                continue
            if mapped:
                out.append("Covered by earlier tests (listed in `MAPPED` in the script):")
            else:
                files = sorted({r.file for r in group})
                out.append("Dedicated tests: " + ", ".join(f"`{f}`" for f in files) + ".")
            out.append("")
            out.append("| # | fault or input | what must hold | test | result |")
            out.append("|---|---|---|---|---|")
            for i, r in enumerate(group, 1):
                test = f"`{Path(r.file).name}::{r.function}`"
                cases_text = ""
                params = [c for c in r.cases if c.param] if not r.mapped else []
                if params:
                    marks = {"passed": "✓", "skipped": "–"}
                    cases_text = "<br>" + "<br>".join(
                        f"{marks.get(c.status, '✗')} {cell(humanize(c.param or ''))}" for c in params)
                status = r.status + (f", {r.seconds:.1f} s" if r.cases else "")
                out.append(f"| {i} | {cell(r.fault)}{cases_text} | {cell(r.holds) or '(see the test)'} | {test} | "
                           f"{status} |")
            out.append("")
            observed = [(r, c) for r in group for c in r.cases if c.observed]
            if observed:
                out.append("Observed in this run:")
                out.append("")
                for r, c in observed:
                    label = r.function + (f"[{c.param}]" if c.param else "")
                    for text in c.observed:
                        out.append(f"- `{label}`: {cell(text)}")
                out.append("")
            failures = [(r, c) for r in group for c in r.cases if c.status in ("failed", "error")]
            if failures:
                out.append("Failures:")
                out.append("")
                for r, c in failures:
                    label = r.function + (f"[{c.param}]" if c.param else "")
                    out.append(f"- `{label}` ({c.status}): {cell(c.message)[:400]}")
                out.append("")

    out.append("## Load and soak")
    out.append("")
    out += load_figures()
    out.append("## Overhead and adapter cycle")
    out.append("")
    out += benchmark_links()
    out.append("")
    out.append(STATIC_FINDINGS)
    out.append(STATIC_LIMITS)
    return "\n".join(out).rstrip() + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="do not run pytest; use the last junit XML")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default {OUTPUT.relative_to(ROOT)}")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    files, nodeids = selection()
    if args.no_run:
        if not JUNIT.exists():
            print(f"reliability_report: {JUNIT.relative_to(ROOT)} does not exist; run without --no-run",
                  file=sys.stderr)
            return 2
        try:
            info = json.loads(RUN_INFO.read_text(encoding="utf-8"))
            code, seconds, command, date = info["code"], info["seconds"], info["command"], info["date"]
        except (OSError, ValueError, KeyError):
            code, seconds, command = 0, sum(c.seconds for c in read_junit(JUNIT)), "(unknown: an earlier run)"
            date = dt.datetime.fromtimestamp(JUNIT.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    else:
        print(f"running {len(files)} test files and {len(nodeids)} earlier tests "
              f"(log: {PYTEST_LOG.relative_to(ROOT)})", flush=True)
        code, seconds, command = run_pytest(files + nodeids, args.pytest_args)
        if not JUNIT.exists():
            print(f"reliability_report: pytest exited {code} without results; see {PYTEST_LOG}", file=sys.stderr)
            return 2
        date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        RUN_INFO.write_text(json.dumps({"code": code, "seconds": seconds, "command": command, "date": date}),
                            encoding="utf-8")
    cases = read_junit(JUNIT)
    rows = build_rows(cases)
    minutes = f"{max(1, round(seconds / 60))} min" if seconds >= 90 else f"{seconds:.0f} s"
    text = render(rows, cases, {"seconds": seconds, "command": command, "minutes": minutes, "date": date})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    failed = sum(c.status in ("failed", "error") for c in cases)
    print(f"wrote {args.output} ({len(cases)} cases, {failed} failed, {seconds:.0f} s)")
    return 1 if failed or code not in (0, 1) else 0


if __name__ == "__main__":
    sys.exit(main())
