"""Where a peer finds its broker and its token: ``JOBWIRE_URL``, ``JOBWIRE_TOKEN``, the version.

One place for the environment, so that the client, the worker and the admin
commands read it alike. An address is ``host:port`` or a URL:
``jobwire://host:port`` (plain TCP) or ``jobwires://host:port`` (TLS,
verified against the system's CAs unless a context is given). Several
addresses, the brokers of one cluster shard, are separated by commas
(``a:7878,b:7878``); a peer connects to whichever of them leads
(:mod:`protocol.peers`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import metadata
from typing import Final

URL_ENV: Final = "JOBWIRE_URL"
DEFAULT_ADDRESS: Final = "127.0.0.1:7878"
SCHEMES: Final = {"jobwire": False, "jobwires": True}


def resolve_addresses(address: str | Sequence[str] | None = None) -> tuple[tuple[str, ...], bool]:
    """``((host:port, ...), tls)`` from ``address``, else ``JOBWIRE_URL``, else 127.0.0.1:7878.

    ``address`` is one address, several separated by commas, or a sequence
    of them. Every one must be a URL of the same scheme or none: TLS is for
    all of them or none (``host:port`` is plain TCP, like ``jobwire://``).
    A repeated address is kept once. Raises ``ValueError`` for an empty
    element (``"a:1,,b:2"``), an empty sequence, a URL of another scheme or
    with a path, and for TLS on some addresses but not all.
    """
    if address is None or isinstance(address, str):
        value = (address or "").strip() or os.environ.get(URL_ENV, "").strip() or DEFAULT_ADDRESS
        elements = value.split(",")
    else:
        elements = [part for item in address for part in str(item).split(",")]
        if not elements:
            raise ValueError("no broker address given (an empty list)")
        value = ",".join(elements)
    parsed = [_resolve_one(element.strip(), value) for element in elements]
    tls = {secure for _, secure in parsed}
    if len(tls) > 1:
        raise ValueError(
            f"{value!r}: either every address is jobwires:// (TLS) or none is; "
            "a jobwires:// address may not be mixed with plain ones"
        )
    return tuple(dict.fromkeys(host_port for host_port, _ in parsed)), tls.pop()


def _resolve_one(element: str, value: str) -> tuple[str, bool]:
    if not element:
        raise ValueError(
            f"{value!r}: an empty broker address (two commas in a row, or one at an end)"
        )
    scheme, sep, rest = element.partition("://")
    if not sep:
        return element, False
    tls = SCHEMES.get(scheme.lower())
    if tls is None:
        raise ValueError(f"{element!r}: the scheme must be jobwire:// or jobwires://")
    rest = rest.rstrip("/")
    if not rest or "/" in rest or "?" in rest:
        raise ValueError(f"{element!r}: expected jobwire://HOST:PORT")
    return rest, tls


def version() -> str:
    """The installed jobwire's version (``--version``)."""
    try:
        return metadata.version("jobwire")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"
