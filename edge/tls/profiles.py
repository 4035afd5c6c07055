"""The TLS profiles of ``[tls] profile``: Mozilla's server-side TLS configurations.

Mozilla's "Server Side TLS" guidelines (https://wiki.mozilla.org/Security/Server_Side_TLS,
version 5.7, machine-readable at https://ssl-config.mozilla.org/guidelines/5.7.json, the
version sslyze 6.3 checks against) define three configurations:

=============  ==============  =================================================  =============
profile        TLS versions    TLS 1.2 cipher suites                              suite order
=============  ==============  =================================================  =============
modern         1.3             (none: TLS 1.3 only)                               client's
intermediate   1.2, 1.3        ECDHE (and DHE) with AES-GCM or ChaCha20-Poly1305  client's
old            1.0 - 1.3       the above, then CBC suites, static RSA, 3DES       server's
=============  ==============  =================================================  =============

All three accept the key exchange groups X25519, P-256 (prime256v1) and P-384
(secp384r1) only: OpenSSL 3.0's default list also offers X448, P-521 and the
finite-field groups, which the guidelines leave out. TLS 1.3's suites are OpenSSL's
default three, which are exactly Mozilla's (Python 3.11 cannot change them anyway).
``intermediate`` is the default: no CBC suite, no static RSA key exchange.

Not applied, on purpose: the DHE suites stay in the list as Mozilla writes it, but
the edge loads no DH parameters, so OpenSSL never negotiates them (devices use
ECDHE; finite-field DH costs far more CPU per handshake). HSTS, OCSP stapling and
certificate lifetimes are matters of the HTTP layer and of the certificate issued
(``certs`` issues server certificates for at most 366 days, Mozilla's limit for
intermediate and old).

Everything here is applied once, when a server context is built
(:meth:`edge.tls.contexts.ContextCache.build`); a handshake pays nothing for it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from edge.tls.errors import TlsConfigError

__all__ = ["DEFAULT_PROFILE", "PROFILES", "TlsProfile", "apply_profile", "get_profile"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsProfile:
    """One of Mozilla's configurations, as the settings of an ``ssl.SSLContext``."""

    name: str
    #: The lowest protocol version the profile allows (a deployment may raise it).
    minimum_version: ssl.TLSVersion
    #: OpenSSL cipher string for TLS 1.2 and below (Mozilla's list, in Mozilla's order).
    ciphers: str
    #: OpenSSL groups list (``SSL_CTX_set1_groups_list``).
    groups: str
    #: True: the server's suite order wins; False: the client picks (Mozilla: the client
    #: knows whether it has AES hardware, and so whether AES-GCM or ChaCha20 is cheaper).
    server_preference: bool


_GROUPS = "X25519:P-256:P-384"

_MODERN_AND_INTERMEDIATE_12 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)

_OLD_12 = (
    _MODERN_AND_INTERMEDIATE_12 + ":ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:"
    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:"
    "ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:"
    "DHE-RSA-AES128-SHA256:DHE-RSA-AES256-SHA256:AES128-GCM-SHA256:AES256-GCM-SHA384:"
    "AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA:DES-CBC3-SHA"
    # OpenSSL 3.0's default security level refuses SHA-1 signatures and TLS 1.0/1.1;
    # the old profile exists precisely for clients that need them.
    ":@SECLEVEL=0"
)

#: The profiles by name.
PROFILES: dict[str, TlsProfile] = {
    "modern": TlsProfile(
        name="modern",
        minimum_version=ssl.TLSVersion.TLSv1_3,
        # Unused with TLS 1.3 only; kept to the intermediate list should a deployment
        # lower the minimum version by hand.
        ciphers=_MODERN_AND_INTERMEDIATE_12,
        groups=_GROUPS,
        server_preference=False,
    ),
    "intermediate": TlsProfile(
        name="intermediate",
        minimum_version=ssl.TLSVersion.TLSv1_2,
        ciphers=_MODERN_AND_INTERMEDIATE_12,
        groups=_GROUPS,
        server_preference=False,
    ),
    "old": TlsProfile(
        name="old",
        minimum_version=ssl.TLSVersion.TLSv1,
        ciphers=_OLD_12,
        groups=_GROUPS,
        server_preference=True,
    ),
}

#: The profile when ``[tls] profile`` is not set.
DEFAULT_PROFILE = "intermediate"


def get_profile(name: str) -> TlsProfile:
    """The profile called ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown TLS profile {name!r} (choose one of {', '.join(PROFILES)})"
        ) from None


def apply_profile(ctx: ssl.SSLContext, profile: TlsProfile, ciphers: str | None = None) -> None:
    """Set ``profile``'s suites, groups and suite order on a new server context.

    ``ciphers`` (an OpenSSL cipher string) replaces the profile's TLS 1.2 list.
    The minimum version is the caller's to set: a deployment may ask for more.
    """
    from edge.tls import canames

    try:
        ctx.set_ciphers(ciphers or profile.ciphers)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"TLS profile {profile.name}: cipher list refused: {exc}") from None
    if profile.server_preference:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        groups_set = canames.set_groups_list(ctx, profile.groups)
    except ValueError as exc:
        raise TlsConfigError(f"TLS profile {profile.name}: {exc}") from None
    if not groups_set:
        # Without SSL_CTX_set1_groups_list a single curve is what Python can set: P-256
        # is in every profile, so the context stays within the guidelines (no X25519).
        ctx.set_ecdh_curve("prime256v1")
