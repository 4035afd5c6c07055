"""Which live sessions a new trust snapshot ends (the per-set ``disconnect_on_revoke`` option).

A CRL or a deleted set only refuses *new* handshakes: a device that is already
connected keeps its session, as with any TLS server. A set with the option on
asks for more. When a snapshot becomes active on an edge, :func:`plan_revocations`
compares it with the previous one and returns what to close:

- a CRL of such a set that is newly active (absent from the previous snapshot's
  version of the set) ends the sessions authenticated by that set whose peer
  certificate it lists, matched as CRLs match: issuer name and serial number;
- such a set that is gone from the new snapshot (deleted) ends every session it
  authenticated.

Sans-I/O: the edge passes each live session's :class:`SessionInfo` to
:meth:`RevocationPlan.reason_for` and closes those given a reason (MQTT 5:
DISCONNECT 0x98 Administrative action, the reason as Reason String). The work is
done once per applied snapshot, never per handshake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from edge.core.session import SessionInfo
from edge.trust.model import TrustSnapshot

__all__ = ["RevocationPlan", "plan_revocations"]


@dataclass(frozen=True, slots=True)
class RevocationPlan:
    """What a newly applied snapshot ends: revoked certificates and deleted sets, per set.

    ``revoked`` maps ``(set name, issuer RFC 4514, serial as lower-case hex)`` (the
    form :class:`~edge.core.session.PeerCertificate` holds) to the reason to give;
    ``deleted`` maps a deleted set's name to its reason.
    """

    revoked: dict[tuple[str, str, str], str] = field(default_factory=dict)
    deleted: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.revoked or self.deleted)

    def reason_for(self, info: SessionInfo) -> str | None:
        """The reason to end the session ``info``, or ``None`` to keep it."""
        deleted = self.deleted.get(info.set_name)
        if deleted is not None:
            return deleted
        cert = info.certificate
        if cert is None or not self.revoked:
            return None
        return self.revoked.get((info.set_name, cert.issuer, cert.serial.lower()))


def plan_revocations(old: TrustSnapshot, new: TrustSnapshot) -> RevocationPlan:
    """Compare two snapshots: the sessions to end for sets with ``disconnect_on_revoke`` on.

    A set's option is read where it applies: in ``new`` for its newly active CRLs,
    in ``old`` for a deleted set (the last state the administrator left it in).
    """
    plan = RevocationPlan()
    for name, before in old.sets.items():
        if before.disconnect_on_revoke and name not in new.sets:
            plan.deleted[name] = f"certificate set {name!r} was deleted"
    for name, active in new.sets.items():
        if not active.disconnect_on_revoke or not active.crls:
            continue
        previous = old.sets.get(name)
        # A CRL is "newly active" when its signed content was not active before;
        # comparing the TBS bytes needs no re-encoding.
        seen = {crl.tbs_certlist_bytes for crl in previous.crls} if previous is not None else set()
        for crl in active.crls:
            if crl.tbs_certlist_bytes in seen:
                continue
            issuer = crl.issuer.rfc4514_string()
            crl_number = _crl_number(crl)
            for entry in crl:
                serial = f"{entry.serial_number:x}"
                plan.revoked[(name, issuer, serial)] = (
                    f"certificate serial {serial} was revoked by the CRL of {issuer}"
                    f"{crl_number} in certificate set {name!r}"
                )
    return plan


def _crl_number(crl: x509.CertificateRevocationList) -> str:
    """`` (CRL number N)`` when the CRL carries one, else ``""``: names the CRL in reasons."""
    try:
        ext = crl.extensions.get_extension_for_class(x509.CRLNumber)
    except x509.ExtensionNotFound:
        return ""
    return f" (CRL number {ext.value.crl_number})"
