"""Backends: the OpenAI-compatible client against fake servers on 127.0.0.1,
the function wrapper, and the real-time fake model."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

import pytest

from dualtrack.router.backends import (
    Backend,
    BackendError,
    CallableBackend,
    Completion,
    FakeBackend,
    OpenAICompatibleBackend,
)
from support.fakehttp import FakeHTTPServer
from support.net import LOOPBACK, free_port

KEY = "sk-test-9f8e7d6c5b4a"


def chat_answer(text: str = "Paris.", usage: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    body: Dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def sse(*chunks: Any, done: bool = True, newline: str = "\n") -> str:
    lines = [f"data: {json.dumps(c) if not isinstance(c, str) else c}{newline}{newline}" for c in chunks]
    if done:
        lines.append(f"data: [DONE]{newline}{newline}")
    return "".join(lines)


def delta(text: str) -> Dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


USAGE_CHUNK = {"object": "chat.completion.chunk", "choices": [],
               "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}


def generate(backend: OpenAICompatibleBackend, prompt: Any = "Capital of France?", timeout: float = 5.0,
             cancel: Optional[threading.Event] = None) -> Completion:
    return backend.generate(prompt, timeout=timeout, cancel=cancel or threading.Event())


def sent_body(fake: FakeHTTPServer, index: int = 0) -> Dict[str, Any]:
    return json.loads(fake.requests[index].body)


# =========================================================================== non-streaming


def test_non_streaming_reads_text_and_usage(fake_http: FakeHTTPServer) -> None:
    fake_http.respond(200, chat_answer("Paris.", {"prompt_tokens": 12, "completion_tokens": 2}))
    backend = OpenAICompatibleBackend(fake_http.url, "llama3.1:8b", track="local")
    assert isinstance(backend, Backend)
    completion = generate(backend)
    assert completion == Completion("Paris.", 12, 2, None, "llama3.1:8b", None, False)
    request = fake_http.requests[0]
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    body = sent_body(fake_http)
    assert body == {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "Capital of France?"}],
                    "stream": False}
    assert "Authorization" not in request.headers


@pytest.mark.parametrize("stream", [False, True])
def test_keep_alive_connections_are_reused(fake_http: FakeHTTPServer, stream: bool) -> None:
    if stream:
        fake_http.respond(200, sse(delta("ok"), USAGE_CHUNK), headers={"Content-Type": "text/event-stream"})
    else:
        fake_http.respond(200, chat_answer(usage={"prompt_tokens": 1, "completion_tokens": 1}))
    with OpenAICompatibleBackend(fake_http.url, "m", stream=stream) as backend:
        for _ in range(3):
            assert generate(backend).text
    assert len(fake_http.requests) == 3
    assert len({r.client_port for r in fake_http.requests}) == 1


@pytest.mark.parametrize("suffix, path", [
    ("", "/v1/chat/completions"),
    ("/", "/v1/chat/completions"),
    ("/v1", "/v1/chat/completions"),
    ("/v1/", "/v1/chat/completions"),
    ("/proxy/openai", "/proxy/openai/v1/chat/completions"),
    ("/proxy/v1/chat/completions", "/proxy/v1/chat/completions"),
])
def test_base_url_with_or_without_v1(fake_http: FakeHTTPServer, suffix: str, path: str) -> None:
    fake_http.respond(200, chat_answer(usage={"prompt_tokens": 1, "completion_tokens": 1}))
    generate(OpenAICompatibleBackend(fake_http.url + suffix, "m"))
    assert fake_http.requests[0].path == path


def test_messages_extra_body_and_quality_scorer(fake_http: FakeHTTPServer) -> None:
    fake_http.respond(200, chat_answer("four", {"prompt_tokens": 5, "completion_tokens": 1}))
    seen: List[Any] = []

    def scorer(prompt: Any, text: str) -> float:
        seen.append((prompt, text))
        return 0.75

    backend = OpenAICompatibleBackend(fake_http.url, "m", extra_body={"temperature": 0, "max_tokens": 64},
                                      quality_scorer=scorer)
    messages = [{"role": "system", "content": "Answer in words."}, {"role": "user", "content": "2+2?"}]
    completion = generate(backend, messages)
    assert completion.quality_score == 0.75 and seen == [(messages, "four")]
    body = sent_body(fake_http)
    assert body["messages"] == messages and body["temperature"] == 0 and body["max_tokens"] == 64


def test_a_failing_scorer_means_unknown_quality(fake_http: FakeHTTPServer) -> None:
    fake_http.respond(200, chat_answer(usage={"prompt_tokens": 1, "completion_tokens": 1}))

    def scorer(prompt: Any, text: str) -> float:
        raise ZeroDivisionError

    assert generate(OpenAICompatibleBackend(fake_http.url, "m", quality_scorer=scorer)).quality_score is None


def test_missing_usage_is_estimated_and_flagged(fake_http: FakeHTTPServer) -> None:
    fake_http.respond(200, chat_answer("x" * 40))
    completion = generate(OpenAICompatibleBackend(fake_http.url, "m"), "y" * 20)
    assert (completion.tokens_in, completion.tokens_out, completion.usage_estimated) == (5, 10, True)


@pytest.mark.parametrize("body", [b"not json", json.dumps({"choices": []}).encode()])
def test_malformed_answers_are_errors(fake_http: FakeHTTPServer, body: bytes) -> None:
    fake_http.respond(200, body, headers={"Content-Type": "application/json"})
    with pytest.raises(BackendError) as info:
        generate(OpenAICompatibleBackend(fake_http.url, "m"))
    assert info.value.kind == "error"


# =========================================================================== streaming


def test_streaming_with_usage(fake_http: FakeHTTPServer) -> None:
    fake_http.respond(200, sse(delta("Par"), delta("is"), delta("."), USAGE_CHUNK),
                      headers={"Content-Type": "text/event-stream"})
    completion = generate(OpenAICompatibleBackend(fake_http.url, "m", stream=True))
    assert (completion.text, completion.tokens_in, completion.tokens_out) == ("Paris.", 11, 3)
    assert not completion.usage_estimated
    body = sent_body(fake_http)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert fake_http.requests[0].headers["Accept"] == "text/event-stream"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_streaming_without_usage_estimates_tokens(fake_http: FakeHTTPServer, newline: str) -> None:
    stream = ": keep-alive comment" + newline + newline + sse(delta("a" * 8), delta("b" * 8), newline=newline)
    fake_http.respond(200, stream, headers={"Content-Type": "text/event-stream"})
    backend = OpenAICompatibleBackend(fake_http.url, "m", stream=True, include_usage=False)
    completion = generate(backend, "p" * 12)
    assert completion.text == "a" * 8 + "b" * 8
    assert (completion.tokens_in, completion.tokens_out, completion.usage_estimated) == (3, 4, True)
    assert "stream_options" not in sent_body(fake_http)


def test_streaming_usage_in_the_last_content_chunk_and_no_done(fake_http: FakeHTTPServer) -> None:
    # llama.cpp-style: usage rides on the final chunk; the stream just ends.
    last = dict(delta("!"), usage={"prompt_tokens": 4, "completion_tokens": 2})
    fake_http.respond(200, sse(delta("hi"), last, done=False), headers={"Content-Type": "text/event-stream"})
    completion = generate(OpenAICompatibleBackend(fake_http.url, "m", stream=True))
    assert (completion.text, completion.tokens_in, completion.tokens_out) == ("hi!", 4, 2)


def test_an_error_event_mid_stream_is_an_error(fake_http: FakeHTTPServer) -> None:
    fake_http.respond(200, sse(delta("hi"), {"error": {"message": "model crashed"}}),
                      headers={"Content-Type": "text/event-stream"})
    with pytest.raises(BackendError, match="model crashed") as info:
        generate(OpenAICompatibleBackend(fake_http.url, "m", stream=True))
    assert info.value.kind == "error"


class StreamServer:
    """Streams server-sent events one at a time: ``hold_after`` events, then
    waits for ``proceed``, then the rest, noting when the client hangs up."""

    def __init__(self, events: List[bytes], hold_after: int) -> None:
        self.events = events
        self.hold_after = hold_after
        self.sent = 0
        self.held = threading.Event()  # the first events are out
        self.proceed = threading.Event()
        self.client_gone = threading.Event()
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # body ends when the connection closes

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for i, event in enumerate(server.events):
                        if i == server.hold_after:
                            server.held.set()
                            while not server.proceed.wait(0.05):
                                if server._stopping.is_set():
                                    return
                        elif i > server.hold_after and server._stopping.wait(0.01):
                            return
                        self.wfile.write(event)
                        self.wfile.flush()
                        server.sent += 1
                except OSError:
                    server.client_gone.set()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._httpd = Server((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._httpd.server_address[1]}"

    def __enter__(self) -> "StreamServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self.proceed.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def stream_events(n: int) -> List[bytes]:
    return [f"data: {json.dumps(delta(f'tok{i} '))}\n\n".encode() for i in range(n)]


def run_in_thread(fn: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    out["thread"] = thread
    return out


def test_cancel_mid_stream_stops_reading() -> None:
    events = stream_events(500)
    with StreamServer(events, hold_after=1) as server:
        backend = OpenAICompatibleBackend(server.url, "m", stream=True)
        cancel = threading.Event()
        call = run_in_thread(lambda: generate(backend, timeout=30.0, cancel=cancel))
        assert server.held.wait(5), "the first event was never sent"
        cancel.set()
        server.proceed.set()
        call["thread"].join(5)
        assert not call["thread"].is_alive(), "generate kept reading after cancel"
        err = call.get("error")
        assert isinstance(err, BackendError) and err.kind == "cancelled", call
        assert err.tokens_in >= 1  # a cancelled call still reports what it incurred
        assert server.client_gone.wait(5), "the client never hung up"
        assert server.sent < len(events)


def test_a_stream_that_stalls_times_out_at_the_deadline() -> None:
    with StreamServer(stream_events(5), hold_after=1) as server:
        backend = OpenAICompatibleBackend(server.url, "m", stream=True)
        started = time.monotonic()
        with pytest.raises(BackendError) as info:
            generate(backend, timeout=0.5)
        elapsed = time.monotonic() - started
    assert info.value.kind == "timeout"
    assert 0.5 <= elapsed < 1.5  # the whole answer's deadline, not one read timeout per piece
    assert info.value.tokens_out >= 1


def test_cancel_before_sending_sends_nothing(fake_http: FakeHTTPServer) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(BackendError) as info:
        generate(OpenAICompatibleBackend(fake_http.url, "m"), cancel=cancel)
    assert info.value.kind == "cancelled" and fake_http.requests == []


# =========================================================================== failures


@pytest.mark.parametrize("status, kind", [(429, "rate_limited"), (500, "unavailable"), (503, "unavailable"),
                                          (400, "error"), (404, "error")])
def test_http_errors_map_to_kinds(fake_http: FakeHTTPServer, status: int, kind: str) -> None:
    fake_http.respond(status, {"error": {"message": f"status {status} here", "type": "x"}},
                      headers={"Retry-After": "2"} if status == 429 else None)
    with pytest.raises(BackendError) as info:
        generate(OpenAICompatibleBackend(fake_http.url, "m"))
    err = info.value
    assert err.kind == kind and err.status == status and f"status {status} here" in str(err)
    assert err.outcome == "error"
    if status == 429:
        assert err.retry_after == 2.0


def test_slow_server_times_out(fake_http: FakeHTTPServer) -> None:
    fake_http.respond(200, chat_answer(), delay=30.0)
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        generate(OpenAICompatibleBackend(fake_http.url, "m"), timeout=0.3)
    assert info.value.kind == "timeout" and info.value.outcome == "timeout"
    assert time.monotonic() - started < 2.0


def test_connection_refused_is_unavailable() -> None:
    url = f"http://{LOOPBACK}:{free_port()}"
    with pytest.raises(BackendError) as info:
        generate(OpenAICompatibleBackend(url, "m"), timeout=2.0)
    assert info.value.kind == "unavailable"


def test_a_dropped_connection_is_unavailable(fake_http: FakeHTTPServer) -> None:
    fake_http.respond(200, chat_answer(), drop=True)
    with pytest.raises(BackendError) as info:
        generate(OpenAICompatibleBackend(fake_http.url, "m"))
    assert info.value.kind == "unavailable"


# =========================================================================== credentials


def test_api_key_is_sent_as_bearer_and_never_shown(fake_http: FakeHTTPServer, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    backend = OpenAICompatibleBackend(fake_http.url + "/v1", "gpt-x", api_key_env="TEST_LLM_KEY",
                                      headers={"X-Tenant": "tenant-secret-42"})
    statuses = (401, 500, 429)
    fake_http.respond(200, chat_answer(usage={"prompt_tokens": 1, "completion_tokens": 1}))
    for status in statuses:
        # A server that echoes the credentials back in its error.
        fake_http.respond(status, {"error": {"message": f"Incorrect API key provided: {KEY} tenant-secret-42"}})
    generate(backend)
    assert fake_http.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert fake_http.requests[0].headers["X-Tenant"] == "tenant-secret-42"

    caplog.set_level(logging.DEBUG)
    shown: List[str] = [repr(backend), str(backend)]
    for _status in statuses:
        with pytest.raises(BackendError) as info:
            generate(backend)
        shown += [str(info.value), repr(info.value), info.value.message]
    shown += [r.getMessage() for r in caplog.records]
    for text in shown:
        assert KEY not in text and "tenant-secret-42" not in text, text
    assert any("<redacted>" in text for text in shown)


def test_api_key_configuration_errors_do_not_leak() -> None:
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR"):
        OpenAICompatibleBackend("http://127.0.0.1:1", "m", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(ValueError) as info:
        OpenAICompatibleBackend("http://127.0.0.1:1", "m", api_key=KEY + "\n")
    assert KEY not in str(info.value)
    with pytest.raises(ValueError, match="credentials") as info:
        OpenAICompatibleBackend(f"http://user:{KEY}@127.0.0.1:1", "m")
    assert KEY not in str(info.value)
    with pytest.raises(ValueError, match="track"):
        OpenAICompatibleBackend("http://127.0.0.1:1", "m", track="remote")


# =========================================================================== CallableBackend


def test_callable_backend_accepts_strings_mappings_and_completions() -> None:
    cancel = threading.Event()
    text = CallableBackend(lambda prompt: "abcdefgh", "api", "vendor-model").generate(
        "12345678", timeout=1.0, cancel=cancel)
    assert (text.text, text.tokens_in, text.tokens_out, text.model, text.usage_estimated) == \
        ("abcdefgh", 2, 2, "vendor-model", True)
    mapping = CallableBackend(lambda p: {"text": "ok", "tokens_in": 7, "tokens_out": 1, "quality_score": 0.6},
                              "api", "m").generate("p", timeout=1.0, cancel=cancel)
    assert (mapping.tokens_in, mapping.tokens_out, mapping.quality_score, mapping.usage_estimated) == \
        (7, 1, 0.6, False)
    done = Completion("x", 1, 1, 0.9, "other-model")
    assert CallableBackend(lambda p: done, "local", "m").generate("p", timeout=1.0, cancel=cancel) is done


def test_callable_backend_passes_timeout_and_cancel_when_accepted() -> None:
    seen: Dict[str, Any] = {}

    def fn(prompt: str, *, timeout: float, cancel: threading.Event) -> str:
        seen.update(timeout=timeout, cancel=cancel)
        return "ok"

    cancel = threading.Event()
    CallableBackend(fn, "local", "m").generate("p", timeout=2.5, cancel=cancel)
    assert seen == {"timeout": 2.5, "cancel": cancel}


@pytest.mark.parametrize("exc, kind", [(TimeoutError(), "timeout"), (ConnectionError(KEY), "error"),
                                       (BackendError("slow down", "rate_limited"), "rate_limited")])
def test_callable_backend_translates_exceptions(exc: BaseException, kind: str) -> None:
    def fn(prompt: str) -> str:
        raise exc

    with pytest.raises(BackendError) as info:
        CallableBackend(fn, "api", "m").generate("p", timeout=1.0, cancel=threading.Event())
    assert info.value.kind == kind and KEY not in str(info.value)


def test_callable_backend_rejects_odd_return_values() -> None:
    with pytest.raises(BackendError, match="returned int"):
        CallableBackend(lambda p: 42, "api", "m").generate("p", timeout=1.0, cancel=threading.Event())


# =========================================================================== FakeBackend


def test_fake_backend_answers_after_its_latency() -> None:
    backend = FakeBackend("api", latency=0.05, quality=0.9, tokens_out=10, cost=0.001, text="hi")
    started = time.monotonic()
    completion = backend.generate("q" * 8, timeout=5.0, cancel=threading.Event())
    assert time.monotonic() - started >= 0.05
    assert completion == Completion("hi", 2, 10, 0.9, "fake-api", 0.001)
    assert (backend.calls, backend.completed) == (1, 1)


def test_fake_backend_cancel_interrupts_at_once() -> None:
    backend = FakeBackend("local", latency=30.0, tokens_out=1000)
    cancel = threading.Event()
    call = run_in_thread(lambda: backend.generate("q", timeout=60.0, cancel=cancel))
    deadline = time.monotonic() + 5
    while backend.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    cancel.set()
    call["thread"].join(2)
    assert not call["thread"].is_alive()
    assert isinstance(call["error"], BackendError) and call["error"].kind == "cancelled"
    assert backend.cancelled == 1


def test_fake_backend_times_out_at_the_deadline_and_fails_at_its_error_rate() -> None:
    backend = FakeBackend("api", latency=30.0)
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.generate("q", timeout=0.1, cancel=threading.Event())
    assert info.value.kind == "timeout" and time.monotonic() - started < 1.0
    backend.set(latency=0.0, error_rate=1.0, error_kind="unavailable")
    with pytest.raises(BackendError) as info:
        backend.generate("q", timeout=1.0, cancel=threading.Event())
    assert info.value.kind == "unavailable" and backend.failed == 2


def test_fake_backend_parameters_are_validated() -> None:
    backend = FakeBackend("local")
    with pytest.raises(ValueError, match="error_rate"):
        backend.set(error_rate=1.5)
    with pytest.raises(ValueError, match="not a FakeBackend parameter"):
        backend.set(latncy=1.0)
    with pytest.raises(ValueError, match="error_kind"):
        backend.set(error_kind="cancelled")
    with pytest.raises(ValueError, match="track"):
        FakeBackend("cloud")


# =========================================================================== first token


def test_a_stream_signals_its_first_token_before_the_answer_ends() -> None:
    with StreamServer(stream_events(5), hold_after=1) as server:
        backend = OpenAICompatibleBackend(server.url, "m", stream=True)
        assert backend.reports_first_token
        first_token = threading.Event()
        started = time.monotonic()
        call = run_in_thread(lambda: backend.generate("q", timeout=10.0, cancel=threading.Event(),
                                                      first_token=first_token))
        assert first_token.wait(5), "the first token was never signalled"
        assert call["thread"].is_alive()  # the rest of the answer is held by the server
        server.proceed.set()
        call["thread"].join(5)
        elapsed = time.monotonic() - started
    completion = call["value"]
    assert completion.text.startswith("tok0 ") and completion.first_token_seconds is not None
    assert 0 <= completion.first_token_seconds < elapsed


def test_a_non_streaming_backend_does_not_report_a_first_token(fake_http: FakeHTTPServer) -> None:
    fake_http.respond(200, chat_answer(), headers={"Content-Type": "application/json"})
    backend = OpenAICompatibleBackend(fake_http.url, "m")
    assert not backend.reports_first_token
    assert generate(backend).first_token_seconds is None


def test_fake_backend_first_token_then_the_rest_of_the_answer() -> None:
    backend = FakeBackend("local", first_token_latency=0.05, latency=0.05)
    first_token = threading.Event()
    started = time.monotonic()
    completion = backend.generate("q", timeout=5.0, cancel=threading.Event(), first_token=first_token)
    assert first_token.is_set() and time.monotonic() - started >= 0.1
    assert completion.first_token_seconds is not None and 0.05 <= completion.first_token_seconds < 0.1
    # By default the first token comes with the whole answer.
    whole = FakeBackend("local", latency=0.02).generate("q", timeout=5.0, cancel=threading.Event())
    assert whole.first_token_seconds is not None and whole.first_token_seconds >= 0.02
    # A distribution: a function of the backend's rng.
    drawn = FakeBackend("api", first_token_latency=lambda rng: 0.01 + 0.01 * rng.random())
    assert 0.01 <= drawn.generate("q", timeout=5.0, cancel=threading.Event()).first_token_seconds < 0.05


def test_a_callable_reports_its_first_token_only_when_it_takes_the_parameter() -> None:
    def streaming(prompt: Any, *, first_token: Optional[threading.Event] = None) -> str:
        if first_token is not None:
            first_token.set()
        return "ok"

    def plain(prompt: Any, **kwargs: Any) -> str:
        return "ok"

    backend = CallableBackend(streaming, "local", "m")
    assert backend.reports_first_token
    first_token = threading.Event()
    assert backend.generate("q", timeout=1.0, cancel=threading.Event(), first_token=first_token).text == "ok"
    assert first_token.is_set()
    assert not CallableBackend(plain, "local", "m").reports_first_token
