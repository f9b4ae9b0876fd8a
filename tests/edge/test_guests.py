"""Guest passes for anonymous shoppers: issued by the site, checked by the broker's auth
callout, limited in size and rate."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge2core.edge.devices import DeviceRefused, DeviceRegistry, DeviceRole
from edge2core.edge.guests import GuestPasses
from edge2core.edge.nats_jwt import user_claims


def test_a_pass_admits_its_guest_as_a_shopper_only() -> None:
    guests = GuestPasses()
    issued = guests.issue()
    device = guests.check(issued.device, issued.password, issued.device)
    assert device.id == issued.device and device.role is DeviceRole.SHOPPER
    guests.check(issued.device, issued.password, f"{issued.device}-tab2")
    other = guests.issue()
    with pytest.raises(DeviceRefused) as refused:
        guests.check(other.device, issued.password)  # someone else's pass
    assert refused.value.reason == "wrong_secret"
    with pytest.raises(DeviceRefused) as refused:
        guests.check(issued.device, issued.password, "kiosk-1")
    assert refused.value.reason == "client_id_not_owned"
    with pytest.raises(DeviceRefused):
        GuestPasses().check(issued.device, issued.password)  # another run's key


def test_no_device_may_be_registered_under_a_guest_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="guest"):
        DeviceRegistry(tmp_path / "devices.json").add("guest-0123", DeviceRole.SHOPPER)


def test_an_expired_pass_is_refused() -> None:
    guests = GuestPasses(ttl_s=-1)
    issued = guests.issue()
    with pytest.raises(DeviceRefused) as refused:
        guests.check(issued.device, issued.password)
    assert refused.value.reason == "guest_expired"
    assert issued.expires_at < time.time()


def test_guests_have_a_rate_and_devices_do_not() -> None:
    guests = GuestPasses(per_minute=3)
    guest = guests.issue().device
    assert [guests.allow(guest) for _ in range(4)] == [True, True, True, False]
    assert guests.allow(guests.issue().device)  # each guest counts alone
    assert all(guests.allow("kiosk-1") for _ in range(10))
    assert [guests.may_issue("10.0.0.7") for _ in range(4)] == [True, True, True, False]
    assert guests.may_issue("10.0.0.8")


def test_the_broker_limits_a_guests_message_size() -> None:
    claims = user_claims("UKEY", "guest-1", ("a.>",), ("b.>",), payload=2_000_000)
    assert claims["nats"]["payload"] == 2_000_000
    assert user_claims("UKEY", "kiosk-1", ("a.>",), ("b.>",))["nats"]["payload"] == -1
