"""Devices that prove themselves with an X.509 certificate instead of a password.

With `device_certs = true` the site's broker asks every MQTT and WebSocket client for a
certificate from the private CA and admits only unrevoked ones (pinned, see `broker_config`);
the auth callout request then carries the verified chain. A device whose certificate says
`OU=device, CN=<id>` may connect without a password, as `<id>` (a username, if sent, must be
the same id), and gets exactly the permissions and client-id rules a password would give it.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from edge2core.edge.devices import Device, DeviceRefused, DeviceRegistry, owns_client_id

__all__ = ["authenticate_certificate", "certificate_device"]


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def certificate_device(claims: dict[str, Any]) -> str | None:
    """The device id of the verified client certificate in an authorization request, if the
    server verified one and it is a device's (`OU=device`)."""
    tls = (claims.get("nats") or {}).get("client_tls") or {}
    chains = tls.get("verified_chains") or []
    if not chains or not chains[0]:
        return None
    try:
        leaf = x509.load_pem_x509_certificate(str(chains[0][0]).encode())
    except ValueError:
        return None
    if _attr(leaf, NameOID.ORGANIZATIONAL_UNIT_NAME) != "device":
        return None
    return _attr(leaf, NameOID.COMMON_NAME) or None


def authenticate_certificate(registry: DeviceRegistry, device_id: str, username: str,
                             client_id: str | None) -> Device:
    """The registered, unrevoked device `device_id` (its certificate was verified by the
    broker); raises DeviceRefused as the password check does."""
    if username and username != device_id:
        raise DeviceRefused("wrong_device", f"certificate of {device_id!r} used as {username!r}")
    device = registry.get(device_id)
    if device is None:
        raise DeviceRefused("unknown_device", f"no device {device_id!r}; register it first")
    if device.revoked:
        raise DeviceRefused("revoked_device", f"device {device_id!r} is revoked")
    if client_id is not None and not owns_client_id(device_id, client_id, registry.ids()):
        raise DeviceRefused("client_id_not_owned",
                            f"device {device_id!r} may not use MQTT client id {client_id!r}")
    return device
