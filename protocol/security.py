"""Secrets and TLS settings shared by the broker, the worker and the client.

No sockets here: this builds the values the asyncio layers are handed.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import os
import ssl
from pathlib import Path

TOKEN_ENV = "BROKER_TOKEN"
# Read when BROKER_TOKEN is unset or empty: one JOBWIRE_ prefix with JOBWIRE_URL.
TOKEN_ENV_ALT = "JOBWIRE_TOKEN"


def auth_proof(token: str, nonce: bytes) -> bytes:
    """What a peer answers to the broker's nonce: HMAC-SHA256 keyed by the token.

    The token itself never crosses the wire, and a proof is good for one
    nonce, so a recorded handshake cannot be replayed on a new connection.
    """
    return hmac.new(token.encode(), nonce, hashlib.sha256).digest()


def proof_matches(token: str, nonce: bytes, proof: bytes | None) -> bool:
    """Constant-time check of a peer's proof."""
    return proof is not None and hmac.compare_digest(proof, auth_proof(token, nonce))


def resolve_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """The token from an explicit value, a file (first line), ``BROKER_TOKEN`` or
    ``JOBWIRE_TOKEN``, in that order.

    Surrounding whitespace is stripped from all three alike (a trailing newline
    from ``echo`` or a secrets mount is never part of a token); a value that is
    only whitespace counts as none given.
    """
    if token and token.strip():
        return token.strip()
    if token_file:
        text = Path(token_file).read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"token file {token_file} is empty")
        return text.splitlines()[0].strip()
    return (
        os.environ.get(TOKEN_ENV, "").strip() or os.environ.get(TOKEN_ENV_ALT, "").strip() or None
    )


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the broker reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve to anything


def server_ssl_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """TLS for the broker; with ``client_ca``, peers must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """TLS for a worker or client: verify the broker against ``ca`` (or the system's CAs)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        context.load_cert_chain(cert, key)
    return context


def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    """The token and TLS options of a program that connects to a broker."""
    parser.add_argument(
        "--token", default=None, help=f"shared secret (or {TOKEN_ENV}, or {TOKEN_ENV_ALT})"
    )
    parser.add_argument("--token-file", default=None, help="file whose first line is the token")
    parser.add_argument("--tls-ca", default=None, help="CA to verify the broker: connect with TLS")
    parser.add_argument("--tls-cert", default=None, help="client certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="client certificate's key (PEM)")


def peer_settings(args: argparse.Namespace) -> tuple[str | None, ssl.SSLContext | None]:
    """The token and TLS context those options ask for (raises OSError or ValueError)."""
    token = resolve_token(args.token, args.token_file)
    context = (
        client_ssl_context(args.tls_ca, args.tls_cert, args.tls_key)
        if args.tls_ca or args.tls_cert
        else None
    )
    return token, context
