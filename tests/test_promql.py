"""PromQLClient: against a real Prometheus where the claim is about Prometheus,
against a scripted fake only for what a real server cannot be made to do."""

from __future__ import annotations

import datetime as dt
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualtrack.adapter.promql import (
    InstantResult,
    PromQLClient,
    Sample,
    _parse_instant,
    escape_label_value,
)
from dualtrack.clock import VirtualClock
from dualtrack.errors import (
    AuthenticationFailed,
    BadQuery,
    BadResponse,
    QueryTimeout,
    SourceError,
    SourceUnavailable,
)
from support.fakehttp import FakeHTTPServer
from support.net import free_port
from support.prometheus import PrometheusServer, openmetrics_text

TOKEN = "s3cr3t-t0ken-value"
PASSWORD = "hunter2-p4ssw0rd"


def vector(*items: Dict[str, Any], warnings: List[str] | None = None) -> Dict[str, Any]:
    body: Dict[str, Any] = {"status": "success", "data": {"resultType": "vector", "result": list(items)}}
    if warnings is not None:
        body["warnings"] = warnings
    return body


def item(value: str, ts: float = 1_700_000_000.0, **labels: str) -> Dict[str, Any]:
    return {"metric": labels, "value": [ts, value]}


OK = vector(item("1", path="local"))


# =========================================================================== real Prometheus

# Backfilled history: two series, ending ten minutes ago, so queries use `at`.
END = int(time.time()) - 600
START = END - 3600


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    points = [(START + 60 * i, float(i)) for i in range(61)]  # 0 .. 60, one per minute
    server.backfill_openmetrics(
        openmetrics_text(
            [
                ("dualtrack_promql_test_value", {"path": "local", "query_class": "chat"}, points),
                ("dualtrack_promql_test_value", {"path": "api", "query_class": "chat"},
                 [(t, v * 10) for t, v in points]),
            ]
        )
    )
    with server:
        yield server


@pytest.fixture
def client(prom: PrometheusServer) -> Iterator[PromQLClient]:
    with PromQLClient(prom.url, timeout=5.0) as c:
        yield c


needs_prometheus = pytest.mark.prometheus


@needs_prometheus
def test_vector_with_labels(client: PromQLClient):
    result = client.instant("dualtrack_promql_test_value", at=END)
    assert isinstance(result, InstantResult) and result.result_type == "vector"
    by_path = {s.labels["path"]: s for s in result}
    assert set(by_path) == {"local", "api"}
    assert by_path["local"].labels == {
        "__name__": "dualtrack_promql_test_value", "path": "local", "query_class": "chat"
    }
    assert by_path["local"].value == 60.0 and by_path["api"].value == 600.0
    assert by_path["local"].timestamp == pytest.approx(END)
    assert all(s.is_finite for s in result) and result.warnings == ()


@needs_prometheus
def test_evaluation_at_an_explicit_time(client: PromQLClient):
    expr = 'dualtrack_promql_test_value{path="local"}'
    assert [s.value for s in client.instant(expr, at=START + 60 * 10)] == [10.0]
    aware = dt.datetime.fromtimestamp(START + 60 * 20, tz=dt.timezone.utc)
    assert [s.value for s in client.instant(expr, at=aware)] == [20.0]
    # Now is ten minutes past the last sample: beyond the 5 m lookback.
    assert len(client.instant(expr)) == 0


@needs_prometheus
def test_scalar(client: PromQLClient):
    result = client.instant("scalar(vector(2.5)) * 2")
    assert result.result_type == "scalar"
    assert [(s.labels, s.value) for s in result] == [({}, 5.0)]


@needs_prometheus
def test_division_by_zero_is_kept_but_not_finite(client: PromQLClient):
    inf = client.instant("vector(1) / 0")
    assert len(inf) == 1 and inf.samples[0].value == math.inf
    assert not inf.samples[0].is_finite and inf.finite == ()
    neg = client.instant("vector(-1) / 0")
    assert neg.samples[0].value == -math.inf
    nan = client.instant("0 / 0")
    assert nan.result_type == "scalar" and math.isnan(nan.samples[0].value)
    assert nan.finite == ()


@needs_prometheus
def test_empty_vector_is_a_result_not_an_error(client: PromQLClient):
    result = client.instant('dualtrack_promql_test_value{path="nowhere"}', at=END)
    assert result.result_type == "vector" and len(result) == 0 and list(result) == []


@needs_prometheus
def test_range_vector_is_rejected(client: PromQLClient):
    with pytest.raises(BadResponse, match="range vector: wrap it in a function"):
        client.instant("dualtrack_promql_test_value[5m]", at=END)
    with pytest.raises(BadResponse, match="string"):
        client.instant('"just a string"')


@needs_prometheus
def test_bad_promql_is_bad_query(client: PromQLClient):
    with pytest.raises(BadQuery) as info:
        client.instant("sum(rate(dualtrack_promql_test_value[5m])")
    assert info.value.error_type == "bad_data"
    assert info.value.kind == "bad_query"
    assert "parse error" in str(info.value) and "sum(rate(" in str(info.value)


@needs_prometheus
def test_long_query_goes_as_post(client: PromQLClient):
    expr = "vector(1)" + " + 0" * 600  # ~2400 characters
    assert len(expr) > 2000
    assert [s.value for s in client.instant(expr)] == [1.0]


@needs_prometheus
@pytest.mark.parametrize(
    "value",
    ["local", 'say "hi"', "back\\slash", "two\nlines", "tab\there", "\\n literally", "$1 ${x}", "ünïcödé ✓", ""],
)
def test_escape_label_value_round_trips_through_prometheus(client: PromQLClient, value: str):
    # absent() returns one series carrying the equality matchers' labels: the
    # value that comes back is the value Prometheus parsed from our literal.
    expr = f'absent(dualtrack_no_such_metric{{x="{escape_label_value(value)}"}})'
    result = client.instant(expr)
    assert [s.labels.get("x", "") for s in result] == [value]


@needs_prometheus
def test_is_online(prom: PrometheusServer, client: PromQLClient):
    assert client.is_online() is True
    with PromQLClient(f"http://127.0.0.1:{free_port()}", timeout=1.0) as nobody:
        assert nobody.is_online() is False


@needs_prometheus
def test_killed_prometheus_is_backend_unavailable(prometheus_factory):
    prom = prometheus_factory()
    with PromQLClient(prom.url, retries=1, backoff=0.01) as c:
        assert [s.value for s in c.instant("vector(3)")] == [3.0]
        prom.kill()
        with pytest.raises(SourceUnavailable, match="connection refused") as info:
            c.instant("vector(3)")
        assert "2 attempts" in str(info.value)
        assert c.is_online() is False


# =========================================================================== fake server


def make(fake: FakeHTTPServer, **options: Any) -> PromQLClient:
    options.setdefault("timeout", 2.0)
    options.setdefault("backoff", 0.0)
    return PromQLClient(fake.url, **options)


def test_request_shape_and_path_prefix(fake_http: FakeHTTPServer):
    fake_http.respond(200, OK)
    with PromQLClient(fake_http.url + "/prometheus/", timeout=2.0) as c:
        result = c.instant("up", at=1_700_000_000.25, timeout=1.5)
    assert [(s.labels, s.value) for s in result] == [({"path": "local"}, 1.0)]
    (req,) = fake_http.requests
    assert req.method == "GET" and req.path == "/prometheus/api/v1/query"
    assert req.params["query"] == ["up"]
    assert req.params["time"] == ["1700000000.250"]
    assert req.params["timeout"] == ["1.500"]
    assert "Authorization" not in req.headers


def test_long_query_is_posted_form_encoded(fake_http: FakeHTTPServer):
    fake_http.respond(200, OK)
    expr = "sum(up)" + " + 0" * 600
    with make(fake_http) as c:
        c.instant(expr)
    (req,) = fake_http.requests
    assert req.method == "POST" and req.query == {}
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.form["query"] == [expr]


def test_warnings_are_returned(fake_http: FakeHTTPServer):
    fake_http.respond(200, vector(item("2"), warnings=["partial response: store down"]))
    with make(fake_http) as c:
        assert c.instant("up").warnings == ("partial response: store down",)


def test_slow_answer_is_query_timeout(fake_http: FakeHTTPServer):
    fake_http.respond(200, OK, delay=5.0)
    started = time.monotonic()
    with make(fake_http, timeout=0.2, retries=0) as c:
        with pytest.raises(QueryTimeout) as info:
            c.instant("up")
    assert time.monotonic() - started < 2.0
    assert info.value.kind == "timeout"


def test_trickled_answer_is_cut_at_the_timeout(fake_http: FakeHTTPServer):
    # Each byte arrives well within the socket timeout; the whole answer doesn't.
    fake_http.respond(200, OK, trickle=0.05)
    started = time.monotonic()
    with make(fake_http, timeout=0.4, retries=0) as c:
        with pytest.raises(QueryTimeout, match="not complete within 0.40 s"):
            c.instant("up")
    assert time.monotonic() - started < 1.0


def test_connections_are_reused(fake_http: FakeHTTPServer):
    fake_http.respond(200, OK)
    with make(fake_http) as c:
        for _ in range(3):
            c.instant("up")
    assert len({r.client_port for r in fake_http.requests}) == 1


def test_503_is_retried_then_backend_unavailable(fake_http: FakeHTTPServer):
    fake_http.respond(503, "Service Unavailable")
    with make(fake_http, retries=3) as c:
        with pytest.raises(SourceUnavailable, match="HTTP 503") as info:
            c.instant("up")
    assert len(fake_http.requests) == 4
    assert "gave up after 4 attempts" in str(info.value)


def test_backoff_grows_exponentially(fake_http: FakeHTTPServer):
    fake_http.respond(503, "down")
    slept: List[float] = []
    with make(fake_http, retries=3, backoff=0.1, sleep=slept.append) as c:
        with pytest.raises(SourceUnavailable):
            c.instant("up")
    assert slept == pytest.approx([0.1, 0.2, 0.4])


def test_500_then_success_is_retried(fake_http: FakeHTTPServer):
    fake_http.respond(500, {"status": "error", "errorType": "internal", "error": "boom"})
    fake_http.respond(200, OK)
    with make(fake_http, retries=2) as c:
        assert [s.value for s in c.instant("up")] == [1.0]
    assert len(fake_http.requests) == 2


def test_connection_reset_is_backend_unavailable(fake_http: FakeHTTPServer):
    fake_http.respond(200, OK, drop=True)
    with make(fake_http, retries=1) as c:
        with pytest.raises(SourceUnavailable):
            c.instant("up")
    assert len(fake_http.requests) == 2


def test_connection_refused(free_port):
    with PromQLClient(f"http://127.0.0.1:{free_port()}", retries=0) as c:
        with pytest.raises(SourceUnavailable, match="connection refused"):
            c.instant("up")


@pytest.mark.parametrize(
    "status, body, error, error_type",
    [
        (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}, BadQuery, "bad_data"),
        (422, {"status": "error", "errorType": "execution", "error": "many-to-many"}, BadQuery, "execution"),
        (503, {"status": "error", "errorType": "timeout", "error": "query timed out"}, QueryTimeout, None),
        (503, {"status": "error", "errorType": "canceled", "error": "canceled"}, SourceUnavailable, None),
        (503, {"status": "error", "errorType": "unavailable", "error": "x"}, SourceUnavailable, None),
        (422, {"status": "error", "errorType": "brand_new", "error": "x"}, BadQuery, "brand_new"),
        (404, "404 page not found", BadResponse, None),
        (400, "<html>proxy says no</html>", BadResponse, None),
        (429, "slow down", SourceUnavailable, None),
    ],
)
def test_api_errors_map_to_source_errors(fake_http, status, body, error, error_type):
    fake_http.respond(status, body)
    with make(fake_http, retries=0) as c:
        with pytest.raises(error) as info:
            c.instant("up")
    if error_type is not None:
        assert info.value.error_type == error_type
    assert type(info.value) is error


@pytest.mark.parametrize(
    "status, body, error",
    [
        (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}, BadQuery),
        (200, "{not json", BadResponse),
        (401, "", AuthenticationFailed),
    ],
)
def test_errors_that_retrying_cannot_fix_are_not_retried(fake_http, status, body, error):
    fake_http.respond(status, body)
    with make(fake_http, retries=3) as c:
        with pytest.raises(error):
            c.instant("up")
    assert len(fake_http.requests) == 1


def test_is_online_false_on_errors(fake_http: FakeHTTPServer):
    fake_http.respond(503, "not ready")
    with make(fake_http) as c:
        assert c.is_online() is False


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        {"status": "success"},
        {"status": "success", "data": {"resultType": "vector"}},
        {"status": "success", "data": {"resultType": "vector", "result": {}}},
        vector({"metric": {"a": "b"}, "value": [1, "2", 3]}),
        vector({"metric": {"a": "b"}, "value": [1, 2]}),
        vector({"metric": {"a": "b"}, "value": ["1", "2"]}),
        vector({"metric": {"a": "b"}, "value": [1, "two"]}),
        vector({"metric": ["a", "b"], "value": [1, "2"]}),
        vector({"metric": {"a": 1}, "value": [1, "2"]}),
        vector({"metric": {}, "histogram": [1, {"count": "2"}]}),
        vector(item("1"), warnings="not a list"),  # type: ignore[arg-type]
        {"status": "success", "data": {"resultType": "scalar", "result": [1]}},
        {"status": "success", "data": {"resultType": "heatmap", "result": []}},
    ],
)
def test_malformed_answers_are_bad_response(fake_http: FakeHTTPServer, body: Any):
    fake_http.respond(200, body)
    with make(fake_http, retries=2) as c:
        with pytest.raises(BadResponse) as info:
            c.instant("up")
    assert len(fake_http.requests) == 1
    assert fake_http.url in str(info.value)


@pytest.mark.parametrize("no_length", [False, True], ids=["content-length", "streamed"])
def test_oversize_answer_is_bad_response(fake_http: FakeHTTPServer, no_length: bool):
    big = vector(*[item(str(i), path="x" * 50) for i in range(2000)])
    fake_http.respond(200, big, no_length=no_length)
    with make(fake_http, max_response_bytes=10_000) as c:
        with pytest.raises(BadResponse, match="max_response_bytes=10000"):
            c.instant("up")
    fake_http.respond(200, big, no_length=no_length)
    with make(fake_http) as c:  # the 16 MiB default takes it
        assert len(c.instant("up")) == 2000


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure(fake_http: FakeHTTPServer, status: int):
    fake_http.respond(status, "go away")
    with make(fake_http, bearer_token=TOKEN) as c:
        with pytest.raises(AuthenticationFailed, match=f"HTTP {status}") as info:
            c.instant("up")
    assert info.value.kind == "auth"
    assert not isinstance(info.value, SourceUnavailable)


# -- deadline


def test_deadline_stops_retries():
    clock = VirtualClock()

    def sleep(seconds: float) -> None:
        clock.advance(seconds)

    with FakeHTTPServer() as fake:
        fake.respond(503, "down")
        with PromQLClient(fake.url, retries=10, backoff=0.2, clock=clock, sleep=sleep) as c:
            with pytest.raises(SourceUnavailable, match="3 attempts before the deadline"):
                c.instant("up", deadline=clock.monotonic() + 1.0)
        # attempts at t = 0, 0.2, 0.6; the next (after 0.8 s more) would pass 1.0
        assert len(fake.requests) == 3
        assert clock.monotonic() == pytest.approx(0.6)


def test_deadline_shrinks_the_attempt_timeout(fake_http: FakeHTTPServer):
    fake_http.respond(200, OK, delay=5.0)
    started = time.monotonic()
    with make(fake_http, timeout=10.0, retries=5, backoff=0.05) as c:
        with pytest.raises(QueryTimeout):
            c.instant("up", deadline=time.monotonic() + 0.3)
    assert time.monotonic() - started < 1.5
    assert float(fake_http.requests[0].params["timeout"][0]) <= 0.3


def test_deadline_already_passed_sends_nothing(fake_http: FakeHTTPServer):
    fake_http.respond(200, OK)
    with make(fake_http) as c:
        with pytest.raises(QueryTimeout, match="deadline passed"):
            c.instant("up", deadline=time.monotonic() - 1)
    assert fake_http.requests == []


# -- credentials


def test_bearer_token_is_sent(fake_http: FakeHTTPServer):
    fake_http.respond(200, OK)
    with make(fake_http, bearer_token=TOKEN, headers={"X-Scope-OrgID": "tenant-1"}) as c:
        c.instant("up")
        assert c.is_online() is True
    assert fake_http.requests[1].path == "/-/ready"
    first = fake_http.requests[0]
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"
    assert first.headers["X-Scope-OrgID"] == "tenant-1"


def test_bearer_token_file_is_reread_when_it_changes(fake_http: FakeHTTPServer, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    fake_http.respond(200, OK)
    with make(fake_http, bearer_token_file=token_file) as c:
        c.instant("up")
        token_file.write_text("second-token\n")
        st = token_file.stat()
        # A new mtime for sure, whatever the file system's timestamp granularity.
        os.utime(token_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        c.instant("up")
        token_file.unlink()  # mid-rotation: keep the last good token
        c.instant("up")
    assert [r.headers["Authorization"] for r in fake_http.requests] == [
        "Bearer first-token", "Bearer second-token", "Bearer second-token"
    ]


def test_basic_auth_from_argument_and_from_url(fake_http: FakeHTTPServer):
    fake_http.respond(200, OK)
    with make(fake_http, basic_auth=("alice", PASSWORD)) as c:
        c.instant("up")
    host = fake_http.url.split("//", 1)[1]
    with PromQLClient(f"http://bob:{PASSWORD}@{host}/") as c:
        c.instant("up")
        assert PASSWORD not in c.base_url and "bob" not in c.base_url
    import base64

    sent = [base64.b64decode(r.headers["Authorization"].split()[1]).decode() for r in fake_http.requests]
    assert sent == [f"alice:{PASSWORD}", f"bob:{PASSWORD}"]


def _all_text(err: BaseException) -> str:
    return str(err) + repr(err) + "".join(traceback.format_exception(type(err), err, err.__traceback__))


@pytest.mark.parametrize(
    "scenario", ["401", "503", "500-echo", "bad-json", "timeout", "bad-query", "refused", "reset", "oversize"]
)
@pytest.mark.parametrize("auth", ["bearer", "basic", "url", "header"])
def test_credentials_never_appear_in_errors_or_repr(fake_http: FakeHTTPServer, scenario: str, auth: str):
    secret = TOKEN if auth in ("bearer", "header") else PASSWORD
    echo = f"your Authorization: Bearer {TOKEN} / {PASSWORD} is wrong"
    {
        "401": lambda: fake_http.respond(401, echo),
        "503": lambda: fake_http.respond(503, echo),
        "500-echo": lambda: fake_http.respond(500, {"status": "error", "errorType": "internal", "error": echo}),
        "bad-json": lambda: fake_http.respond(200, echo),
        "timeout": lambda: fake_http.respond(200, OK, delay=5),
        "bad-query": lambda: fake_http.respond(400, {"status": "error", "errorType": "bad_data", "error": echo}),
        "refused": lambda: None,
        "reset": lambda: fake_http.respond(200, OK, drop=True),
        "oversize": lambda: fake_http.respond(200, echo * 100),
    }[scenario]()
    host = fake_http.url.split("//", 1)[1] if scenario != "refused" else f"127.0.0.1:{free_port()}"
    options: Dict[str, Any] = {"timeout": 0.3, "retries": 1, "backoff": 0.0, "max_response_bytes": 1000}
    url = f"http://{host}"
    if auth == "bearer":
        options["bearer_token"] = TOKEN
    elif auth == "basic":
        options["basic_auth"] = ("alice", PASSWORD)
    elif auth == "url":
        url = f"http://alice:{PASSWORD}@{host}"
    else:
        options["headers"] = {"X-Api-Key": TOKEN}
    with PromQLClient(url, **options) as c:
        assert secret not in repr(c)
        with pytest.raises(SourceError) as info:
            c.instant(f"up # {scenario}")
    # The message, its repr and the whole chained traceback (requests' and
    # urllib3's own messages included).
    assert secret not in _all_text(info.value)


def test_constructor_validation_messages_hide_secrets(tmp_path: Path):
    cases = [
        ("ftp://host/", "http:// or https://"),
        ("http:///path", "with a host"),
        ("http://host:99999", "not a valid URL"),
        ("http://host/?a=b", "query string"),
        (f"ftp://u:{PASSWORD}@host/", "http:// or https://"),
    ]
    for url, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            PromQLClient(url)
        assert PASSWORD not in str(info.value)
    with pytest.raises(ValueError, match="only one of"):
        PromQLClient("http://h", bearer_token=TOKEN, basic_auth=("a", PASSWORD))
    with pytest.raises(ValueError, match="only one of"):
        PromQLClient(f"http://u:{PASSWORD}@h", bearer_token=TOKEN)
    with pytest.raises(ValueError, match="control characters") as info:
        PromQLClient("http://h", bearer_token=TOKEN + "\n")
    assert TOKEN not in str(info.value)
    with pytest.raises(ValueError, match="bearer_token_file"):
        PromQLClient("http://h", bearer_token_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="bearer_token_file"):
        PromQLClient("http://h", bearer_token_file=tmp_path / "empty")
    with pytest.raises(ValueError, match="at most one"):
        PromQLClient("http://h", ca_bundle=tmp_path, insecure_skip_verify=True)
    with pytest.raises(ValueError, match="ca_bundle"):
        PromQLClient("http://h", ca_bundle=tmp_path / "nope.pem")
    for bad in ({"timeout": 0}, {"retries": -1}, {"backoff": -1}, {"max_response_bytes": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PromQLClient("http://h", **bad)
    with PromQLClient("https://h:8443/prom/", bearer_token=TOKEN) as c:
        assert c.base_url == "https://h:8443/prom"
        assert repr(c) == "PromQLClient('https://h:8443/prom', auth=bearer, timeout=5, retries=2)"


def test_instant_argument_validation():
    with PromQLClient("http://127.0.0.1:1") as c:
        with pytest.raises(ValueError):
            c.instant("   ")
        with pytest.raises(ValueError, match="naive"):
            c.instant("up", at=dt.datetime(2024, 1, 1))
        with pytest.raises(TypeError):
            c.instant("up", at="yesterday")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="finite"):
            c.instant("up", at=math.nan)


def test_escape_label_value_unit():
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    with pytest.raises(TypeError):
        escape_label_value(3)  # type: ignore[arg-type]


# =========================================================================== parser property

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy, one_in: int = 10) -> st.SearchStrategy:
    """``bad`` once in ``one_in`` draws, else ``good``: mostly-valid bodies
    reach deep into the parser instead of stopping at its first check."""
    return st.integers(1, one_in).flatmap(lambda i: bad if i == 1 else good)


value_strings = mostly(
    st.sampled_from(["1", "0.5", "-3e-9", "NaN", "+Inf", "-Inf", "1e400"]),
    st.sampled_from(["", " 1", "1_0", "x", "0x10"]) | st.text(max_size=6) | json_scalars,
)
timestamps = mostly(st.floats(allow_nan=False, allow_infinity=False) | st.integers(), st.floats() | json_values
                    | st.integers(min_value=10**308, max_value=10**400))
points = mostly(st.tuples(timestamps, value_strings).map(list), st.lists(timestamps | value_strings, max_size=3)
                | json_values)
labels = mostly(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3), json_values)
samples = mostly(
    st.fixed_dictionaries({"metric": labels, "value": points}),
    st.fixed_dictionaries({}, optional={"metric": labels, "value": points, "histogram": json_values}) | json_values,
)
near_valid = st.fixed_dictionaries(
    {
        "status": mostly(st.just("success"), json_scalars),
        "data": mostly(
            st.fixed_dictionaries(
                {
                    "resultType": mostly(st.sampled_from(["vector", "scalar", "matrix", "string"]), json_scalars),
                    "result": mostly(st.lists(samples, min_size=1, max_size=3), points | json_values | st.just([]), 4),
                }
            ),
            json_values,
        ),
    },
    optional={
        "warnings": mostly(st.lists(st.text(max_size=5), max_size=2), json_values),
        "infos": mostly(st.lists(st.text(max_size=5), max_size=2), json_values),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mostly(near_valid, json_values, one_in=4))
def test_parser_returns_a_result_or_bad_response(body: Any):
    try:
        result = _parse_instant(body)
    except BadResponse:
        return
    assert isinstance(result, InstantResult)
    assert result.result_type in ("vector", "scalar")
    for sample in result:
        assert isinstance(sample, Sample) and isinstance(sample.value, float)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in sample.labels.items())
