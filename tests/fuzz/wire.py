"""The wire side of the fuzzer: one case is raw bytes written to the daemon's Unix socket; its
answers are read with h11 (so a malformed answer from the server is caught too) and judged.

Shared by `bench/fuzz.py` and `tests/test_fuzz.py`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import h11

#: The error code of the JSON 400 the daemon's HTTP parser sends before the app sees a request.
PARSER_CODE = "invalid_http"

# Verdicts. The first four are fine; the rest are failures.
OK = "ok"
PARSER_REJECTED = "parser_rejected"  # the HTTP parser's JSON 400 (invalid_http), sent before the app sees anything
NO_ANSWER = "no_answer"  # bytes that are not a complete request (truncated, garbage) got no answer at all
SHED = "shed"  # 503 with Retry-After: load shedding, allowed
SERVER_ERROR = "server_error"  # a 5xx other than shedding
NON_JSON_ERROR = "non_json_error"  # an error answer without {"error": {"code", "message"}}
UNANSWERED = "unanswered"  # a well-formed request got no answer
TIMEOUT = "timeout"  # a well-formed request got no answer in time
BAD_HTTP = "bad_http"  # the server's bytes were not valid HTTP
UNEXPECTED = "unexpected_status"  # a case that must succeed (or fail in a known way) did not
GRACE_S = 1.0
FAILURES = (SERVER_ERROR, NON_JSON_ERROR, UNANSWERED, TIMEOUT, BAD_HTTP, UNEXPECTED)


@dataclass(frozen=True)
class Case:
    """Bytes to write, and what the daemon owes them."""

    category: str  # "schema", "raw" or "payload"
    family: str  # e.g. "png_bomb", "bad_chunked"
    data: bytes
    well_formed: bool = True  # a valid HTTP/1.1 request: the app must answer it
    answers: int = 1  # answers to read (pipelined requests)
    half_close: bool = False  # shut down our side after writing (truncated requests)
    method: str = "GET"  # HEAD answers have no body
    pipeline: tuple[str, ...] = ()  # the method of each pipelined request, when there are several
    expect: int | None = None  # the status the (first) answer must have, where it is known

    def describe(self, limit: int = 300) -> str:
        head = self.data[:limit]
        return f"{self.category}/{self.family} ({len(self.data)} bytes): {head!r}" + (
            "..." if len(self.data) > limit else ""
        )


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Outcome:
    verdict: str
    answers: list[Answer] = field(default_factory=list)
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in FAILURES


def http_request(
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    close: bool = True,
) -> bytes:
    """A well-formed HTTP/1.1 request (Content-Length set, `Connection: close` by default)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: edge-agent"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def path_segment(text: str) -> str:
    return quote(text, safe="")


def exchange(sock_path: Path, case: Case, timeout: float = 15.0) -> tuple[list[Answer], str, int]:
    """Write the case, read up to `case.answers` answers. Returns (answers, problem, bytes received)
    where problem is "" (clean end), "timeout", or "bad_http: ..."."""
    deadline = time.monotonic() + timeout
    conn = h11.Connection(h11.CLIENT)
    methods = case.pipeline or (case.method,)

    def prime() -> None:  # h11 reads an answer only to a request it has seen us send (HEAD: no body)
        hint = "HEAD" if methods[min(len(answers), len(methods) - 1)] == "HEAD" else "GET"
        conn.send(h11.Request(method=hint, target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())

    answers: list[Answer] = []
    received = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        try:
            s.sendall(case.data)
            if case.half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up on us early (e.g. after a 400): read what it said
        except TimeoutError:
            return answers, "timeout", received
        prime()
        # Bytes that may not be a complete request get a short grace, then our side is shut so
        # the server sees the end instead of waiting for more.
        grace_at = None if case.well_formed or case.half_close else time.monotonic() + GRACE_S
        current: Answer | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                unread, closed = conn.trailing_data
                if current is None and closed and not unread:
                    return answers, "", received  # closed without (another) answer
                return answers, f"bad_http: {exc}", received
            if event is h11.NEED_DATA:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return answers, "timeout", received
                waiting = received == 0 and grace_at is not None
                limit = min(remaining, grace_at - time.monotonic()) if waiting and grace_at is not None else remaining
                s.settimeout(max(0.001, limit))
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    if waiting:  # the parser waits for bytes that will never come: let it see the end
                        grace_at = None
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_WR)
                        continue
                    return answers, "timeout", received
                except ConnectionResetError:
                    data = b""
                received += len(data)
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                current = Answer(
                    event.status_code, {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}, b""
                )
                body = bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                current.body = bytes(body)
                answers.append(current)
                current = None
                if len(answers) >= case.answers or conn.their_state is not h11.DONE:
                    return answers, "", received
                conn.start_next_cycle()
                prime()
            elif isinstance(event, h11.ConnectionClosed):
                return answers, "", received
            # InformationalResponse (100 Continue) and others: keep reading


def is_json_error(answer: Answer) -> bool:
    """Whether the body is an error the API promises: {"error": {"code": str, "message": str}},
    or on the Open Inference Protocol's routes its own {"error": str}."""
    try:
        err = json.loads(answer.body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    if isinstance(err, str):
        return bool(err)
    return (
        isinstance(err, dict)
        and isinstance(err.get("code"), str)
        and bool(err["code"])
        and isinstance(err.get("message"), str)
    )


def error_code(answer: Answer) -> str | None:
    """The envelope's code (None for a v2 error, which carries only its message)."""
    err = json.loads(answer.body)["error"]
    return err["code"] if isinstance(err, dict) else None


def judge(case: Case, answers: list[Answer], problem: str) -> Outcome:
    """The verdict on one case's answers."""
    if problem.startswith("bad_http"):
        return Outcome(BAD_HTTP, answers, problem)
    if not answers:
        if not case.well_formed:
            return Outcome(NO_ANSWER, answers, problem or "connection closed")
        return Outcome(TIMEOUT if problem == "timeout" else UNANSWERED, answers, problem)
    verdict = OK
    methods = case.pipeline or (case.method,)
    for i, a in enumerate(answers):
        if a.status == 400 and is_json_error(a) and error_code(a) == PARSER_CODE:
            if case.well_formed:
                return Outcome(NON_JSON_ERROR, answers, "the HTTP parser refused a well-formed request")
            verdict = PARSER_REJECTED
            continue
        json_ok = methods[min(i, len(methods) - 1)] == "HEAD" or is_json_error(a)
        if a.status >= 500:
            if a.status == 503 and "retry-after" in a.headers and json_ok:
                verdict = SHED if verdict == OK else verdict
                continue
            return Outcome(SERVER_ERROR, answers, f"{a.status}: {a.body[:200]!r}")
        if a.status >= 400 and not json_ok:
            return Outcome(NON_JSON_ERROR, answers, f"{a.status}: {a.body[:200]!r}")
    if case.expect is not None and answers[0].status != case.expect:
        return Outcome(
            UNEXPECTED, answers, f"expected {case.expect}, got {answers[0].status}: {answers[0].body[:200]!r}"
        )
    if case.well_formed and len(answers) < case.answers:
        return Outcome(
            TIMEOUT if problem == "timeout" else UNANSWERED, answers, f"{len(answers)}/{case.answers} answers"
        )
    return Outcome(verdict, answers, problem)


def run_case(sock_path: Path, case: Case, timeout: float = 15.0) -> Outcome:
    """Send one case and judge what came back."""
    try:
        answers, problem, _ = exchange(sock_path, case, timeout)
    except OSError as exc:  # could not even connect (or the socket failed under us)
        return Outcome(UNANSWERED if case.well_formed else NO_ANSWER, [], f"socket error: {exc}")
    return judge(case, answers, problem)


def health(sock_path: Path, timeout: float = 10.0) -> bool:
    """GET /v2/health/live answers 200 {"live": true}."""
    probe = Case("health", "live", http_request("GET", "/v2/health/live"))
    with contextlib.suppress(OSError):
        answers, problem, _ = exchange(sock_path, probe, timeout)
        return not problem and len(answers) == 1 and answers[0].status == 200 and b'"live":true' in answers[0].body
    return False
