"""Who is on the other end of a request: :func:`client_address`, the one place that reads ``X-Forwarded-For``.

Anyone can send ``X-Forwarded-For``, so it is believed only from proxies named in ``CR_TRUSTED_PROXIES``
(addresses or networks: OpenHIM core, a load balancer). From any other TCP peer the header is ignored and the
peer's own address is the answer. From a trusted peer the header's hops are read from the right (the hop
nearest to us first), skipping further trusted proxies: the first address that is not a trusted proxy is the
client — the left-most hops were written by the client itself and prove nothing. A hop that is not an IP
address stops the walk at the last trusted proxy. Used for AuditEvent ``agent.network.address`` (submissions,
lookups, admin actions) and for the admin login's per-address rate limit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

from .context import SETTINGS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(request: web.Request) -> str | None:
    settings = request.config_dict.get(SETTINGS)
    return resolve(
        request.remote,
        request.headers.getall("X-Forwarded-For", []),
        settings.trusted_proxies if settings else (),
    )


def resolve(peer: str | None, forwarded_headers: Iterable[str], trusted: tuple[Network, ...]) -> str | None:
    """The client's address from the TCP peer, the ``X-Forwarded-For`` lines and the trusted proxies."""
    here = _ip(peer)
    if here is None or not _trusted(here, trusted):
        return str(here) if here is not None else peer
    hops = [hop.strip() for line in forwarded_headers for hop in line.split(",")]
    for hop in reversed(hops):
        address = _ip(hop)
        if address is None:
            break
        here = address
        if not _trusted(address, trusted):
            break
    return str(here)


def _ip(value: str | None) -> Address | None:
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 (a dual-stack socket) is 10.0.0.1
    return address


def _trusted(address: Address, trusted: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)
