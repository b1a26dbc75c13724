"""Where a peer finds its broker and its token: ``JOBWIRE_URL``, ``JOBWIRE_TOKEN``, the version.

One place for the environment, so that the client, the worker and the admin
commands read it alike. An address is ``host:port`` or a URL:
``jobwire://host:port`` (plain TCP) or ``jobwires://host:port`` (TLS,
verified against the system's CAs unless a context is given).
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Final

URL_ENV: Final = "JOBWIRE_URL"
DEFAULT_ADDRESS: Final = "127.0.0.1:7878"
SCHEMES: Final = {"jobwire": False, "jobwires": True}


def resolve_address(address: str | None = None) -> tuple[str, bool]:
    """``(host:port, tls)`` from ``address``, else ``JOBWIRE_URL``, else 127.0.0.1:7878.

    Raises ``ValueError`` for a URL of another scheme, or one with a path.
    """
    value = (address or "").strip() or os.environ.get(URL_ENV, "").strip() or DEFAULT_ADDRESS
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value, False
    tls = SCHEMES.get(scheme.lower())
    if tls is None:
        raise ValueError(f"{value!r}: the scheme must be jobwire:// or jobwires://")
    rest = rest.rstrip("/")
    if not rest or "/" in rest or "?" in rest:
        raise ValueError(f"{value!r}: expected jobwire://HOST:PORT")
    return rest, tls


def version() -> str:
    """The installed jobwire's version (``--version``)."""
    try:
        return metadata.version("jobwire")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"
