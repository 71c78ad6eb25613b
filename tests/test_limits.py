"""Every limit is a setting, and going past one gets a clear error: never a crash, a hang or unbounded memory."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from gateway.limits import ClientCallLimiter
from shared_schema import BridgeError, Envelope, ErrorCode, Kind, decode, encode
from shared_schema.limits import check_argument_depth, nesting_depth_exceeds
from tests.procs import Proc, gateway_proc, http_json, running, sidecar_proc, wait_for

MODERN = "2026-07-28"
MAX_BODY = 64 * 1024
DEPTH = 8


# -- units ---------------------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(("depth", "limit", "exceeds"), [(0, 1, False), (1, 1, False), (2, 1, True), (8, 8, False)])
def test_nesting_depth(depth: int, limit: int, exceeds: bool) -> None:
    assert nesting_depth_exceeds(_nested(depth), limit) is exceeds


def test_nesting_check_is_iterative_and_stops_early() -> None:
    bomb: Any = []
    for _ in range(200_000):  # far past the recursion limit: a recursive walk would blow the stack
        bomb = [bomb]
    started = time.perf_counter()
    assert nesting_depth_exceeds(bomb, 32)
    assert time.perf_counter() - started < 0.5
    with pytest.raises(BridgeError) as caught:
        check_argument_depth("t", {"a": bomb}, 32)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENTS and caught.value.data["max_depth"] == 32


def test_client_limiter_counts_per_client_and_releases() -> None:
    limiter = ClientCallLimiter(2)
    limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(BridgeError) as caught:
        limiter.acquire("a")
    assert caught.value.code is ErrorCode.RATE_LIMITED
    limiter.acquire("b")
    limiter.acquire(None)  # not counted
    assert limiter.in_flight("a") == 2 and limiter.in_flight("b") == 1
    for client in ("a", "a", "b", None):
        limiter.release(client)
    assert limiter.in_flight("a") == 0 and limiter.in_flight("b") == 0


# -- against the real processes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    tmp: Path = tmp_path_factory.mktemp("limits")
    sidecar = sidecar_proc(tmp, SIDECAR_MAX_ARGUMENT_DEPTH=str(DEPTH))
    gateway = gateway_proc(
        tmp,
        endpoint=sidecar.extra["endpoint"],
        GATEWAY_MAX_BODY_BYTES=str(MAX_BODY),
        GATEWAY_MAX_ARGUMENT_DEPTH=str(DEPTH),
        GATEWAY_MAX_CALLS_PER_CLIENT="2",
        GATEWAY_BODY_TIMEOUT="1",
        GATEWAY_HEADER_TIMEOUT="1",
        GATEWAY_MAX_HEADER_BYTES="8192",
        GATEWAY_KEEP_ALIVE_TIMEOUT="1",
        GATEWAY_MAX_CONNECTIONS_PER_CLIENT="5",
    )
    with running(sidecar, gateway):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 15, what="ready")
        yield gateway, sidecar


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    return sock


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _read_response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """One whole response (head, and a body of its Content-Length) from a connection the server keeps open."""
    sock.settimeout(timeout)
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a whole response head: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed in a response body: {raw!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def _served(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A kept-alive connection the server has accepted and answered once (so it counts against its limits)."""
    sock = _connect(port, source)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert _status(_read_response(sock)) == 200
    return sock


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def _mcp_modern(name: str, arguments: Any) -> tuple[dict[str, Any], dict[str, str]]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    }
    params = {"name": name, "arguments": arguments, "_meta": meta}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": name,
    }
    return body, headers


def _sse_json(payload: Any) -> Any:
    if isinstance(payload, str) and "data:" in payload:
        return json.loads(next(line[5:] for line in payload.splitlines() if line.startswith("data:")))
    return payload


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/mcp"),
        ("POST", "/tools/execute/echo"),
        ("POST", "/mcp/tools/call"),
        ("POST", "/mcp/tools/list"),
        ("GET", "/tools/list"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("POST", "/no/such/path"),
    ],
)
def test_oversize_body_is_413_on_every_path(limited: tuple[Proc, Proc], method: str, path: str) -> None:
    url = limited[0].extra["url"]
    body = json.dumps({"message": "x" * (MAX_BODY + 1)}).encode()
    status, answer = http_json(method, url + path, body, headers={"accept": "application/json, text/event-stream"})
    assert status == 413 and "exceeds" in json.dumps(answer), (path, status, answer)


@pytest.mark.e2e
def test_declared_length_is_refused_before_the_body_is_sent(limited: tuple[Proc, Proc]) -> None:
    sock = _connect(limited[0].extra["port"])
    with sock:
        sock.sendall(
            b"POST /tools/execute/echo HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: 1000000000\r\n\r\n"
        )
        raw = _read_all(sock)
    assert _status(raw) == 413


@pytest.mark.e2e
def test_chunked_body_is_cut_off_at_the_limit(limited: tuple[Proc, Proc]) -> None:
    sock = _connect(limited[0].extra["port"])
    with sock:
        sock.sendall(
            b"POST /mcp/tools/call HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 16384
        try:
            for _ in range(MAX_BODY // len(chunk) + 4):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed mid-body, as it should
        raw = _read_all(sock)
    assert _status(raw) == 413


@pytest.mark.e2e
def test_slow_body_gets_408(limited: tuple[Proc, Proc]) -> None:
    sock = _connect(limited[0].extra["port"])
    with sock:
        sock.sendall(
            b"POST /tools/execute/echo HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"message":'
        )
        started = time.monotonic()
        raw = _read_all(sock)
    assert _status(raw) == 408 and time.monotonic() - started < 4


@pytest.mark.e2e
@pytest.mark.parametrize("partial", [b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "])
def test_slow_or_silent_request_head_is_closed_with_408(limited: tuple[Proc, Proc], partial: bytes) -> None:
    sock = _connect(limited[0].extra["port"])
    with sock:
        sock.sendall(partial)
        started = time.monotonic()
        for _ in range(3 if partial else 0):  # dribbling does not reset the clock
            time.sleep(0.3)
            try:
                sock.sendall(b"a")
            except OSError:
                break
        raw = _read_all(sock)
    assert _status(raw) == 408 and time.monotonic() - started < 4


@pytest.mark.e2e
def test_a_second_request_head_on_a_kept_alive_connection_is_timed_too(limited: tuple[Proc, Proc]) -> None:
    sock = _connect(limited[0].extra["port"])
    with sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = _read_response(sock)  # answered: the connection now waits for its next request head
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127")
        raw = _read_all(sock)
    assert first.startswith(b"HTTP/1.1 200") and _status(raw) == 408


@pytest.mark.e2e
def test_huge_request_head_gets_431(limited: tuple[Proc, Proc]) -> None:
    sock = _connect(limited[0].extra["port"])
    with sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000)
        raw = _read_all(sock)
    assert _status(raw) == 431, raw[:200]


@pytest.mark.e2e
def test_idle_keep_alive_connection_is_closed(limited: tuple[Proc, Proc]) -> None:
    sock = _connect(limited[0].extra["port"])
    with sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        started = time.monotonic()
        raw = _read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200") and b"408" not in raw and time.monotonic() - started < 4


@pytest.mark.e2e
def test_connections_per_client(limited: tuple[Proc, Proc]) -> None:
    port = limited[0].extra["port"]
    held = [_served(port, "127.0.0.3") for _ in range(5)]
    try:
        extra = _connect(port, "127.0.0.3")
        with extra:
            raw = _read_all(extra)
        assert _status(raw) == 429 and b"retry-after: 1" in raw.lower()
        assert http_json("GET", limited[0].extra["url"] + "/health")[0] == 200  # another address is unaffected
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: _status(_request_on_new_connection(port, "127.0.0.3")) == 200, 5, what="slots freed")


def _request_on_new_connection(port: int, source: str) -> bytes:
    with _connect(port, source) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return _read_all(sock)


@pytest.mark.e2e
def test_argument_depth_on_every_face(limited: tuple[Proc, Proc]) -> None:
    url = limited[0].extra["url"]
    deep = {"message": "x", "extra": _nested(DEPTH + 2)}
    for tool in ("echo", "p2p_echo"):
        status, body = http_json("POST", f"{url}/tools/execute/{tool}", deep)
        assert status == 422 and "nest deeper" in body["error"]["message"], body
        status, body = http_json("POST", url + "/mcp/tools/call", {"name": tool, "arguments": deep})
        assert status == 200 and body["error"]["code"] == -32602, body
        request, headers = _mcp_modern(tool, deep)
        status, body = http_json("POST", url + "/mcp", request, headers=headers)
        body = _sse_json(body)
        # an argument problem, so a tool execution error the model reads (SEP-1303), not a protocol error
        assert status == 200 and body["result"]["isError"] is True, body
        assert "nest deeper" in body["result"]["content"][0]["text"]
    _, metrics = http_json("GET", url + "/metrics")
    assert 'gateway_limit_rejections_total{limit="max_argument_depth"}' in metrics


@pytest.mark.e2e
def test_sidecar_checks_depth_of_calls_it_receives(limited: tuple[Proc, Proc]) -> None:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 3000)
    dealer.connect(limited[1].extra["endpoint"])
    try:
        call = Envelope(Kind.CALL, id="deep", deadline=time.time() + 5, tool="p2p_echo", arguments=_nested(DEPTH + 1))
        dealer.send(encode(call))
        reply = decode(dealer.recv())
    finally:
        dealer.close()
        context.term()
    assert reply.kind is Kind.ERROR and reply.error is not None
    assert reply.error.code is ErrorCode.INVALID_ARGUMENTS and "nest deeper" in reply.error.message


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/mcp", "/tools/execute/echo", "/mcp/tools/call", "/mcp/tools/list"])
def test_json_nesting_bomb_is_a_client_error(limited: tuple[Proc, Proc], path: str) -> None:
    bomb = b"[" * 50_000 + b"]" * 50_000
    status, _ = http_json(
        "POST", limited[0].extra["url"] + path, bomb, headers={"accept": "application/json, text/event-stream"}
    )
    assert 400 <= status < 500, status
    assert limited[0].alive()


@pytest.mark.e2e
def test_calls_in_flight_per_client_get_429(limited: tuple[Proc, Proc]) -> None:
    url = limited[0].extra["url"]
    slow = {"message": "slow", "delay_ms": 1500}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        held = [pool.submit(http_json, "POST", url + "/tools/execute/p2p_echo", slow) for _ in range(2)]
        wait_for(lambda: "gateway_bridge_in_flight 2.0" in http_json("GET", url + "/metrics")[1], 5, what="2 in flight")

        request = http.client.HTTPConnection("127.0.0.1", limited[0].extra["port"], timeout=5)
        request.request(
            "POST", "/tools/execute/echo", json.dumps({"message": "x"}), {"content-type": "application/json"}
        )
        response = request.getresponse()
        body = json.loads(response.read())
        request.close()
        assert response.status == 429 and response.getheader("retry-after") == "1"
        assert body["error"]["code"] == "rate_limited"

        status, body = http_json("POST", url + "/mcp/tools/call", {"name": "echo", "arguments": {"message": "x"}})
        assert status == 429 and body["error"]["code"] == -32000
        request_body, headers = _mcp_modern("echo", {"message": "x"})
        status, body = http_json("POST", url + "/mcp", request_body, headers=headers)
        assert _sse_json(body)["error"]["code"] == -32000

        other = http.client.HTTPConnection(
            "127.0.0.1", limited[0].extra["port"], timeout=5, source_address=("127.0.0.2", 0)
        )
        other.request("POST", "/tools/execute/echo", json.dumps({"message": "y"}), {"content-type": "application/json"})
        assert other.getresponse().status == 200  # another client is not held back
        other.close()
        assert [future.result()[0] for future in held] == [200, 200]
    assert http_json("POST", url + "/tools/execute/echo", {"message": "after"})[0] == 200


@pytest.mark.e2e
def test_total_connections_bound_answers_503(tmp_path: Path) -> None:
    gateway = gateway_proc(tmp_path, GATEWAY_MAX_CONNECTIONS="3", GATEWAY_HEADER_TIMEOUT="30")
    with running(gateway):
        port = gateway.extra["port"]
        # uvicorn counts the connection that asks: two served connections, and the third open one is refused
        held = [_served(port) for _ in range(2)]
        try:
            with _connect(port) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                raw = _read_all(sock)
            assert _status(raw) == 503
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: http_json("GET", gateway.extra["url"] + "/health")[0] == 200, 5, what="served again")
