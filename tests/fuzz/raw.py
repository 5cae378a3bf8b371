"""Raw-bytes cases: malformed HTTP written straight to the Unix socket. Broken request lines,
unknown methods, huge and many headers, lying Content-Length, bad chunked encoding, truncated
requests, invalid UTF-8, HTTP/0.9 and HTTP/2 prefaces, TLS and SSH greetings, pipelining."""

from __future__ import annotations

import random

from hypothesis import strategies as st

from tests.fuzz.payloads import sample_image
from tests.fuzz.wire import Case, http_request

CHEAP_TARGETS = [
    "/v2/health/live",
    "/v2",
    "/v2/models/full",
    "/v2/models/nope/ready",
    "/v1/status",
    "/nope",
    "/metrics",
]
BROKEN_LINES = [
    b"GET\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b" GET / HTTP/1.1\r\n\r\n",
    b"GET  /v2 HTTP/1.1\r\n\r\n",
    b"GET /v2 HTTP/9.9\r\n\r\n",
    b"GET /v2 HTTP/1\r\n\r\n",
    b"GET /v2 HTTX/1.1\r\n\r\n",
    b"get /v2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET\t/v2\tHTTP/1.1\r\n\r\n",
    b"GET /v2 HTTP/1.1\n\n",
    b"GET /v2 HTTP/1.1\rHost: x\r\r",
    b"GET /v2\x00 HTTP/1.1\r\n\r\n",
    b"\r\n\r\nGET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"\x00" * 64,
    b"\r\n" * 200,
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\n",
    b"GET /v2 HTTP/1.1\r\nHost: x",
    b"GET " + b"/" * 100_000 + b" HTTP/1.1\r\n\r\n",
    b"GET /v2 HTTP/1.1 HTTP/1.1\r\n\r\n",
    b"GET /v2 HTTP/01.1\r\n\r\n",
    b"GET /v2?\xff HTTP/1.1\r\n\r\n",
]
METHODS = [
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "MKCOL",
    "BREW",
    "PRI",
    "QUERY",
    "M-SEARCH",
    "SOURCE",
    "PURGE",
    "LINK",
    "A" * 2000,
]
CONTENT_LENGTHS = [
    "-1",
    "-0",
    "+5",
    "0x10",
    "1e3",
    "99999999999999999999999",
    "18446744073709551616",
    "18446744073709551615",
    "9223372036854775807",
    "abc",
    "",
    " 5",
    "5 ",
    "5, 5",
    "5, 6",
    "1.5",
    "\xff",
    "0" * 100 + "5",
]
TRANSFER_ENCODINGS = [
    "chunked",
    "gzip, chunked",
    "chunked, gzip",
    "gzip",
    "identity",
    "CHUNKED",
    " chunked",
    "xchunked",
    "chunked, chunked",
    "deflate",
]
CHUNKED_BODIES = [
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"5\r\nabc\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"ffffffffffffffffffff\r\n\r\n",
    b"5;ext=\x00\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"5\r\nhello\r\n",
    b"0\r\nTrailer: \xff\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"5\nhello\n0\n\n",
    b"7fffffff\r\nab\r\n",
    b"1;" + b"e" * 20_000 + b"\r\na\r\n0\r\n\r\n",
    b"0\r\n" + b"X-T: y\r\n" * 2000 + b"\r\n",
]
BAD_UTF8 = [b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"]
PREFACES = [
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"GET /\r\n",
    b"GET /v2/health/live\r\n\r\n",
    b"\x05\x01\x00",
    b"\x00\x00\x00\x00",
    b"*1\r\n$4\r\nPING\r\n",
]
HEADER_SYNTAX = [
    b"X-A: a\r\n b\r\n",
    b"Bad header\r\n",
    b"Host : x\r\n",
    b": v\r\n",
    b"X-A: a\x00b\r\n",
    b"X-A: a\rb\r\n",
    b"X" * 10_000 + b": y\r\n",
    b"Host: x\r\nHost: y\r\n",
    b"Content-Type: image/png\r\nContent-Type: application/x-npy\r\n",
    b"X-\xff: y\r\n",
    b"X-A: \xff\xfe\r\n",
    b"Content-Type: image/png\xff\r\n",
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
]
ODD_TARGETS = [
    "http://edge-agent/v2/health/live",
    "*",
    "/v2/health/live#frag",
    "?only=query",
    "//v2//health//live",
    "v2/health/live",
    "/v2/../v2/health/live",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/v2/models/%ff%fe/ready",
    "/v2/models/%c0%af",
    "/%00",
    "/v1/classify?deadline_ms=%ff",
    "/" + "a" * 100_000,
    "/v2/models/" + "%41" * 3000,
]


def _valid_requests() -> list[bytes]:
    """Complete requests the app answers (none with Connection: close, for pipelining)."""
    png = sample_image("png")
    reqs = [http_request("GET", t, close=False) for t in CHEAP_TARGETS]
    reqs += [
        http_request("POST", "/v1/classify", png, {"Content-Type": "image/png"}, close=False),
        http_request("POST", "/v1/classify", b"junk", {"Content-Type": "image/png"}, close=False),
        http_request(
            "POST", "/v2/models/full/infer", b'{"inputs": []}', {"Content-Type": "application/json"}, close=False
        ),
        http_request("HEAD", "/v2/health/live", close=False),
    ]
    return reqs


VALID = _valid_requests()


def _post(target: str, headers: bytes, body: bytes) -> bytes:
    return b"POST " + target.encode() + b" HTTP/1.1\r\nHost: edge-agent\r\n" + headers + b"\r\n" + body


@st.composite
def broken_request_line(draw: st.DrawFn) -> Case:
    data = draw(st.one_of(st.sampled_from(BROKEN_LINES), st.binary(max_size=200).map(lambda b: b + b"\r\n\r\n")))
    return Case("raw", "broken_request_line", data, well_formed=False)


@st.composite
def unknown_method(draw: st.DrawFn) -> Case:
    method = draw(st.one_of(st.sampled_from(METHODS), st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1, max_size=20)))
    target = draw(st.sampled_from([*CHEAP_TARGETS, "/v1/classify", "/v1/pin"]))
    return Case("raw", "unknown_method", http_request(method, target), well_formed=False, method=method)


@st.composite
def huge_headers(draw: st.DrawFn) -> Case:
    if draw(st.booleans()):
        size = draw(st.sampled_from([8_192, 65_536, 100_000, 1_000_000]))
        headers = {draw(st.sampled_from(["X-Big", "Cookie", "Content-Type", "User-Agent"])): "v" * size}
        family = "huge_header"
    else:
        count = draw(st.sampled_from([100, 1_000, 10_000, 50_000]))
        headers = {f"X-H{i}": "v" for i in range(count)}
        family = "many_headers"
    return Case(
        "raw", family, http_request("GET", draw(st.sampled_from(CHEAP_TARGETS)), headers=headers), well_formed=False
    )


@st.composite
def bad_content_length(draw: st.DrawFn) -> Case:
    lengths = draw(st.lists(st.sampled_from(CONTENT_LENGTHS), min_size=1, max_size=2))
    head = b"".join(b"Content-Length: " + v.encode("latin-1") + b"\r\n" for v in lengths)
    if draw(st.booleans()):
        head += b"Transfer-Encoding: chunked\r\n"
    head += b"Content-Type: image/png\r\nConnection: close\r\n"
    body = draw(st.sampled_from([b"", b"hello", b"0\r\n\r\n", sample_image("png")]))
    target = draw(st.sampled_from(["/v1/classify", "/v2/models/full/infer", "/v1/pin", "/v2/health/live"]))
    return Case("raw", "bad_content_length", _post(target, head, body), well_formed=False)


@st.composite
def bad_chunked(draw: st.DrawFn) -> Case:
    encoding = draw(st.sampled_from(TRANSFER_ENCODINGS))
    body = draw(st.one_of(st.sampled_from(CHUNKED_BODIES), st.binary(max_size=100)))
    head = b"Transfer-Encoding: " + encoding.encode() + b"\r\nContent-Type: image/png\r\nConnection: close\r\n"
    return Case(
        "raw",
        "bad_chunked",
        _post(draw(st.sampled_from(["/v1/classify", "/v2/models/full/infer"])), head, body),
        well_formed=False,
    )


@st.composite
def chunked_valid(draw: st.DrawFn) -> Case:
    """A real image sent in chunks of random sizes (with extensions and a trailer): must be classified."""
    body, out = sample_image(draw(st.sampled_from(["png", "jpeg", "bmp"]))), b""
    at = 0
    while at < len(body):
        size = draw(st.integers(1, 4096))
        ext = draw(st.sampled_from([b"", b"", b";name=value", b';q="x"']))
        out += b"%x%s\r\n%s\r\n" % (min(size, len(body) - at), ext, body[at : at + size])
        at += size
    out += b"0\r\n" + draw(st.sampled_from([b"", b"X-Trailer: 1\r\n"])) + b"\r\n"
    head = b"Transfer-Encoding: chunked\r\nContent-Type: image/png\r\nConnection: close\r\n"
    return Case("raw", "chunked_valid", _post("/v1/classify", head, out), expect=200)


@st.composite
def truncated(draw: st.DrawFn) -> Case:
    """A valid request cut anywhere, then our side closed: no answer is owed, nothing may break."""
    full = http_request(
        "POST", "/v1/classify", sample_image(draw(st.sampled_from(["png", "jpeg"]))), {"Content-Type": "image/png"}
    )
    cut = draw(st.integers(1, len(full) - 1))
    return Case("raw", "truncated", full[:cut], well_formed=False, half_close=True)


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Case:
    bad = draw(st.sampled_from(BAD_UTF8))
    where = draw(st.sampled_from(["path", "query", "header_value", "header_name", "content_type"]))
    path, query, headers = b"/v2/models/" + (bad if where == "path" else b"full"), b"", b""
    if where == "query":
        query = b"?deadline_ms=" + bad
    elif where == "header_value":
        headers = b"X-A: " + bad + b"\r\n"
    elif where == "header_name":
        headers = b"X-" + bad + b": v\r\n"
    elif where == "content_type":
        path, headers = b"/v1/classify", b"Content-Type: image/" + bad + b"\r\nContent-Length: 0\r\n"
    method = b"POST" if where == "content_type" else b"GET"
    data = method + b" " + path + query + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n"
    return Case("raw", "invalid_utf8", data, well_formed=False, method=method.decode())


@st.composite
def foreign_protocol(draw: st.DrawFn) -> Case:
    data = draw(st.sampled_from(PREFACES)) + draw(st.binary(max_size=64))
    if draw(st.booleans()):
        data = (
            http_request("GET", "/v2/health/live")
            .replace(b"HTTP/1.1", b"HTTP/1.0")
            .replace(b"Host: edge-agent\r\n", b"")
        )
    return Case("raw", "foreign_protocol", data, well_formed=False)


@st.composite
def pipelined(draw: st.DrawFn) -> Case:
    """k complete requests in one write: all k answered, in order. With a garbage tail the parser
    may refuse the lot (the HTTP parser answers its JSON 400 at once), so those are not 'well-formed'."""
    reqs = draw(st.lists(st.sampled_from(VALID), min_size=2, max_size=12))
    tail = draw(st.sampled_from([b"", b"", b"GARBAGE\r\n\r\n", b"\x00\xff"]))
    data = b"".join(reqs[:-1]) + reqs[-1].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1) + tail
    methods = tuple(r.split(b" ", 1)[0].decode() for r in reqs)
    return Case("raw", "pipelined", data, well_formed=not tail, answers=len(reqs), pipeline=methods)


@st.composite
def mutated(draw: st.DrawFn) -> Case:
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    base = draw(st.sampled_from(VALID))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        op, at = rng.randrange(4), rng.randrange(len(data))
        if op == 0:
            data[at] = rng.randrange(256)
        elif op == 1:
            data[at:at] = rng.choice(
                [b"\r\n", b"\x00", b" ", b":", b"\xff", b"\r\n\r\n", b"%", bytes([rng.randrange(256)])]
            )
        elif op == 2:
            del data[at : at + rng.randrange(1, 8)]
        else:
            data[at:at] = data[at : at + rng.randrange(1, 32)]
    return Case("raw", "mutated", bytes(data), well_formed=False, method=base.split(b" ", 1)[0].decode())


@st.composite
def header_syntax(draw: st.DrawFn) -> Case:
    head = draw(st.sampled_from(HEADER_SYNTAX))
    data = b"GET /v2/health/live HTTP/1.1\r\nHost: edge-agent\r\n" + head + b"Connection: close\r\n\r\n"
    return Case("raw", "header_syntax", data, well_formed=False)


@st.composite
def expect_continue(draw: st.DrawFn) -> Case:
    length = draw(st.sampled_from([10, 100_000, 10**9]))
    body = draw(st.sampled_from([b"", b"x" * 10]))
    head = b"Expect: 100-continue\r\nContent-Type: image/png\r\nContent-Length: %d\r\nConnection: close\r\n" % length
    return Case(
        "raw", "expect_continue", _post("/v1/classify", head, body), well_formed=False, half_close=len(body) < length
    )


@st.composite
def odd_target(draw: st.DrawFn) -> Case:
    target = draw(st.sampled_from(ODD_TARGETS))
    method = "OPTIONS" if target == "*" else "GET"
    return Case("raw", "odd_target", http_request(method, target), well_formed=False, method=method)


FAMILIES = [
    broken_request_line,
    unknown_method,
    huge_headers,
    bad_content_length,
    bad_chunked,
    chunked_valid,
    truncated,
    invalid_utf8,
    foreign_protocol,
    pipelined,
    mutated,
    header_syntax,
    expect_continue,
    odd_target,
]


def raw_cases() -> st.SearchStrategy[Case]:
    return st.one_of(*[family() for family in FAMILIES])
