"""How a client reaches the matchmaker: whether an address can be used, and, when a request did
not get through, the hint that fits what went wrong (a certificate not trusted here, TLS spoken
to a plain http:// server, plain http to a server that speaks TLS).

The `floe` commands and the factory say these in their own words for where the setting lives
(`--url`, `FLOE_CACERT`, site.toml's `cacert`); what the failure means is decided here once.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse

SCHEMES = ("http", "https")

# What OpenSSL says when the other end answers a TLS handshake with something that is not TLS
# (the reason names differ between OpenSSL versions).
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE",
                      "UNKNOWN_PROTOCOL", "HTTP_REQUEST"})


def address_problem(url: str) -> str | None:
    """None when `url` is an http:// or https:// address with a host; else what is wrong with
    it and how to write it, as the end of a sentence that names it: "has no scheme; write
    http://localhost:8080 (or https://localhost:8080 where the matchmaker serves TLS)"."""
    if "://" not in url:
        return (f"has no scheme; write http://{url} (or https://{url} where the matchmaker "
                "serves TLS)")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or any(c.isspace() for c in url):
        return "is not an http:// or https:// address"
    if not parts.hostname:
        return "names no host"
    return None


def unreachable_hint(url: str, error: BaseException, cacert_setting: str) -> str | None:
    """What most likely kept a request to `url` from getting through, given the `error` urllib
    raised, and the fix; None when the error says nothing more than itself. `cacert_setting`
    names where the user gives the CA certificate to trust ("--cacert or FLOE_CACERT")."""
    reason = getattr(error, "reason", error)  # URLError wraps what the socket or TLS said
    https = url.lower().startswith("https://")
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (f"its certificate is not trusted here ({reason.verify_message}); give "
                f"{cacert_setting} the CA certificate that signed it (a `floe server "
                "--self-signed` writes its own beside its database, as floe-selfsigned.crt)")
    if https and isinstance(reason, ssl.SSLError) and reason.reason in _NOT_TLS:
        return (f"it does not speak TLS: if it is a plain http:// server, write "
                f"http://{url.split('://', 1)[1]}")
    if not https and isinstance(reason, (http.client.RemoteDisconnected, ConnectionResetError)):
        # What a server that speaks TLS does with plain http.
        return (f"it closed the connection without an answer: if it serves TLS, write "
                f"https://{url.split('://', 1)[1]}")
    return None
