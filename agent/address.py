"""`HOST:PORT` of a TCP listener (the `metrics_listen` setting), parsed and checked once.

The host must be an IP address: a gateway often boots before its DNS works, and a name that
resolves to several addresses would leave it unclear which one is served. IPv6 is written in
brackets (`[::1]:9464`), as in a URL, so the port is never ambiguous.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from agent.errors import AgentError

_EXAMPLE = "e.g. 127.0.0.1:9464, [::1]:9464, or 0.0.0.0:9464 for every interface"


@dataclass(frozen=True)
class ListenAddress:
    """An IP address and a port to listen on; `str()` gives back the canonical `HOST:PORT`."""

    host: str
    port: int

    @property
    def ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.ipv6 else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Where a client reaches it; a wildcard address is shown as such (the host is any of its)."""
        return f"http://{self}"


def parse_listen_address(text: str) -> ListenAddress:
    """`HOST:PORT` -> ListenAddress, or an AgentError that says what is wrong and shows the form."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise AgentError(f"{text!r} is not HOST:PORT ({_EXAMPLE})")
    if host.startswith("["):
        if not host.endswith("]"):
            raise AgentError(f"{text!r}: an IPv6 address ends with ']' before the port ({_EXAMPLE})")
        host = host[1:-1]
        want_v6 = True
    else:
        if ":" in host:
            raise AgentError(f"{text!r}: write an IPv6 address in brackets, [{host}]:{port_text}")
        want_v6 = False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise AgentError(f"{text!r}: host {host!r} is not an IP address ({_EXAMPLE})") from None
    if want_v6 and ip.version != 6:
        raise AgentError(f"{text!r}: only IPv6 addresses go in brackets; write {host}:{port_text}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise AgentError(f"{text!r}: zoned IPv6 addresses (%{ip.scope_id}) are not supported")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise AgentError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535")
    return ListenAddress(str(ip), int(port_text))
