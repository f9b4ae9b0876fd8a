"""Who may connect to the site's broker, decided by the edge: nats-server's auth callout.

MQTT brokers key sessions by client id alone. A registered kiosk that connected with the edge's
own client id replaced the edge's persistent session and the broker dropped 8 of 10 captures it
had acknowledged (field case 14). nats-server has no setting that ties client ids to users, but
its auth callout hands every connecting client's username, password and MQTT client id to a
service, which answers with the client's account and permissions, or an error. This module is
that service; it runs in the edge process, in a thread of its own (its own event loop: a busy
edge loop never delays a connect), with a NATS connection as edge2core's internal user (which,
like the edge's own doors, is in the server's `auth_users` and bypasses the callout):

* the device registry decides as before: username = device id, password = its secret (bcrypt,
  in a small thread pool), unknown and revoked devices refused, the same per-device permissions
  (`device_permissions`), in the account the edge's own clients use (the global account);
* an MQTT client id must be the device's own (`owns_client_id`: its id, or its id followed by
  '-' and anything; never another device's, never the edge's `e2c-...`);
* a refusal is answered with an error (the device gets CONNACK "not authorised"), logged with
  device, client id and reason, and counted in `e2c_devices_refused_total{door, reason}`;
* with device certificates (`certs`, a `DeviceCertIndex`), revocation is decided here, never
  by reloading the broker (a reload closes every device this service admitted): a client
  certificate the CA no longer vouches for, or a device left with only revoked certificates,
  is refused `revoked_certificate` (`device_certs`);
* `enforce()` (every couple of seconds) disconnects connections admitted earlier that are no
  longer valid: device revoked or re-issued, its client id now another device's, or its
  certificate revoked. It kicks them through the system account (`$SYS.REQ.SERVER.<id>.KICK`).

Requests and answers are JWTs signed with ed25519 nkeys (`nats_jwt`): the server signs requests
with its server key; answers are signed with an issuer (account) key generated afresh for each
edge run and kept only in memory; the server config holds its public half.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from edge2core.common.logging import get_logger
from edge2core.common.metrics import DEVICES_REFUSED
from edge2core.common.nats_server import NatsUser
from edge2core.edge.device_certs import DeviceCertIndex, authenticate_certificate, client_certificate
from edge2core.edge.devices import (
    Device,
    DeviceRefused,
    DeviceRegistry,
    device_permissions,
    owns_client_id,
)
from edge2core.edge.guests import GuestPasses
from edge2core.edge.nats_jwt import Issuer, decode_request, response_claims, user_claims

log = get_logger(__name__)

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
KICK_SUBJECT = "$SYS.REQ.SERVER.{server_id}.KICK"
DISCONNECT_EVENTS = "$SYS.ACCOUNT.*.DISCONNECT"
# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Admitted:
    """What a connection was admitted as: checked again when the registry changes."""

    device: str
    password_bcrypt: str
    client_id: str | None
    fingerprint: str | None = None  # its client certificate's, when the broker passed one


@dataclass(frozen=True)
class Connecting:
    """The facts of one authorization request that matter here."""

    cid: int
    username: str
    password: str
    client_id: str | None  # None: not MQTT (no client id to own)
    door: str  # "mqtt", "nats" or "websocket": the metric's label
    host: str
    certificate: str | None = None  # the device id of a verified device certificate
    fingerprint: str | None = None  # SHA-256 of a verified client certificate (MQTT over TLS)

    @classmethod
    def from_request(cls, claims: dict[str, Any]) -> Connecting:
        nats_part = claims["nats"]
        info = nats_part.get("client_info") or {}
        options = nats_part.get("connect_opts") or {}
        kind = str(info.get("type") or "nats")
        cert = client_certificate(claims)
        return cls(
            cid=int(info.get("id") or 0),
            username=str(options.get("user") or ""),
            password=str(options.get("pass") or ""),
            # MQTT over TCP and over WebSockets alike; an empty id is the broker's random one.
            client_id=str(info.get("mqtt_id") or "") if kind == "mqtt" else None,
            door=kind,
            host=str(info.get("host") or ""),
            certificate=cert.device if cert else None,
            fingerprint=cert.fingerprint if cert else None,
        )


class BrokerAuth:
    """The auth callout service of one site's broker (see the module docstring).

    `start()` connects and subscribes, in a thread with its own event loop, and returns once the
    server would reach it; `stop()` undoes it. `enforce()` may be called from any thread.
    """

    def __init__(
        self,
        url: str,
        site: str,
        devices: DeviceRegistry,
        issuer: Issuer,
        internal: NatsUser,
        system: NatsUser | None = None,
        *,
        workers: int | None = None,
        guests: GuestPasses | None = None,
        certs: DeviceCertIndex | None = None,
    ) -> None:
        self.url = url
        self.certs = certs  # device certificates on: revocation decided here (None: off)
        self.guests = guests  # anonymous shoppers with a pass from the site's shopper page
        self.site = site
        self.devices = devices
        self.issuer = issuer
        self._internal = internal
        self._system = system
        # bcrypt releases the GIL: as many checks at once as there are cores.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers or max(2, os.cpu_count() or 2), thread_name_prefix="e2c-broker-auth"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: NatsClient | None = None
        self._sys: NatsClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._server_id: str | None = None
        self._admitted: dict[int, Admitted] = {}
        # Connections this service refused (the broker then closes them with "Authentication
        # Failure"): `broker_watch` skips them, so each refusal is counted once.
        self._refused_order: deque[int] = deque(maxlen=8192)
        self._refused: set[int] = set()
        self._refused_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> BrokerAuth:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="e2c-broker-auth", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._connect(), loop).result(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("broker auth service up", issuer=self.issuer.public_key, site=self.site)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _connect(self) -> None:
        common: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5}
        self._nc = await nats.connect(
            self.url, user=self._internal.user, password=self._internal.password,
            name="e2c-broker-auth", **common,
        )
        await self._nc.subscribe(AUTH_SUBJECT, cb=self._on_request)
        await self._nc.flush()
        if self._system is not None:
            self._sys = await nats.connect(
                self.url, user=self._system.user, password=self._system.password,
                name="e2c-broker-auth-system", **common,
            )
            await self._sys.subscribe(DISCONNECT_EVENTS, cb=self._on_disconnect)
            await self._sys.flush()

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for client in (self._nc, self._sys):
            if client is not None and not client.is_closed:
                with contextlib.suppress(Exception):
                    await client.close()

    # ------------------------------------------------------------------ requests

    def refused(self, cid: int) -> bool:
        """Whether this service refused (and counted) the broker connection `cid`."""
        with self._refused_lock:
            return cid in self._refused

    def _remember_refusal(self, cid: int) -> None:
        with self._refused_lock:
            if len(self._refused_order) == self._refused_order.maxlen:
                self._refused.discard(self._refused_order[0])
            self._refused_order.append(cid)
            self._refused.add(cid)

    async def _on_request(self, msg: Msg) -> None:
        # nats-py runs one callback at a time per subscription: answer each request in a task
        # of its own, so one device's bcrypt check never holds up another's connect.
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            request = decode_request(msg.data)
        except ValueError as exc:
            # Nothing to answer to (no trustworthy user key or server id): the server times
            # the client out, which refuses it.
            log.warning("broker auth: unreadable authorization request", error=str(exc))
            return
        self._server_id = request["nats"]["server_id"]["id"]
        who = Connecting.from_request(request)
        loop = asyncio.get_running_loop()
        try:
            # Checked even if the request has expired meanwhile: a good secret is remembered,
            # so the device's next attempt is answered at once.
            device, admitted = await loop.run_in_executor(self._pool, self._decide, who)
            if self._expired(request):
                self._too_late(who)
                return
        except DeviceRefused as refusal:
            if self._expired(request):
                self._too_late(who)
                return
            answer = response_claims(request, error=f"{refusal.reason}: {refusal}")
            self._refuse(who, refusal.reason, str(refusal))
        except Exception as exc:  # a bug or an unreadable registry: refuse, never admit
            log.exception("broker auth failed; refusing the client", device=who.username)
            answer = response_claims(request, error="internal_error")
            self._refuse(who, "internal_error", repr(exc))
        else:
            publish, subscribe = device_permissions(self.site, device)
            guest = self.guests is not None and self.guests.is_guest(device.id)
            user = self.issuer.encode(
                user_claims(request["nats"]["user_nkey"], device.id, publish, subscribe,
                            payload=self.guests.max_bytes if guest and self.guests else -1)
            )
            answer = response_claims(request, user_jwt=user)
            self._admitted[who.cid] = admitted
        if msg.reply:
            await msg.respond(self.issuer.encode(answer).encode())

    @staticmethod
    def _too_late(who: Connecting) -> None:
        # The server stopped waiting (its auth timeout, e.g. the edge was stalled) and refused
        # the client already; `broker_watch` counts that one. Nothing to answer any more.
        log.warning("broker auth: request answered after the broker's deadline", cid=who.cid,
                    device=who.username, client_id=who.client_id)

    @staticmethod
    def _expired(request: dict[str, Any]) -> bool:
        expires = request.get("exp")
        # `exp` is the server's deadline cut to whole seconds: one second of slack.
        return isinstance(expires, int | float) and time.time() > expires + 1

    def _decide(self, who: Connecting) -> tuple[Device, Admitted]:
        """In the thread pool: registry file, the CA's index and bcrypt."""
        if self.certs is not None:  # a revoked certificate is refused whoever it claims to be
            self.certs.check(None, who.fingerprint)
        if self.guests is not None and self.guests.is_guest(who.username):
            guest = self.guests.check(who.username, who.password, who.client_id)
            return guest, Admitted(guest.id, guest.password_bcrypt, who.client_id, who.fingerprint)
        self.devices.refresh()  # a device added a moment ago may connect at once
        if who.certificate and not who.password:  # X.509 identity instead of a password
            device = authenticate_certificate(self.devices, who.certificate, who.username, who.client_id)
        else:
            device = self.devices.authenticate_broker(who.username, who.password, who.client_id)
        if self.certs is not None:  # on every door: a device left with only revoked certificates
            self.certs.check(device.id, None)
        return device, Admitted(device.id, device.password_bcrypt, who.client_id, who.fingerprint)

    def _refuse(self, who: Connecting, reason: str, detail: str) -> None:
        self._remember_refusal(who.cid)
        DEVICES_REFUSED.labels(door=who.door, reason=reason).inc()
        log.warning("broker refused a device", device=who.username, client_id=who.client_id,
                    reason=reason, detail=detail, ip=who.host, door=who.door)

    # ------------------------------------------------------------------ after the connect

    async def _on_disconnect(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            self._admitted.pop(int(json.loads(msg.data)["client"]["id"]), None)

    def _stale(self, admitted: Admitted, ids: list[str]) -> str | None:
        if self.certs is not None and self._revoked_certificate(admitted):
            return "revoked_certificate"
        if self.guests is not None and self.guests.is_guest(admitted.device):
            return None  # checked at connect; not in the registry
        device = self.devices.get(admitted.device)
        if device is None:
            return "unknown_device"
        if device.revoked:
            return "revoked_device"
        if device.password_bcrypt != admitted.password_bcrypt:
            return "secret_reissued"
        if admitted.client_id is not None and not owns_client_id(device.id, admitted.client_id, ids):
            return "client_id_not_owned"
        return None

    def _refresh(self) -> None:
        # Files read off the event loop; `_stale` then finds them cached.
        self.devices.refresh()
        if self.certs is not None:
            with contextlib.suppress(OSError, ValueError):  # reported by `_revoked_certificate`
                self.certs.snapshot()

    def _revoked_certificate(self, admitted: Admitted) -> bool:
        assert self.certs is not None
        guest = self.guests is not None and self.guests.is_guest(admitted.device)
        try:
            return self.certs.stale(None if guest else admitted.device, admitted.fingerprint) is not None
        except (OSError, ValueError) as exc:  # a half-copied TLS folder: kick nobody this round
            log.warning("device certificates unreadable; revocations wait", error=repr(exc))
            return False

    async def _enforce(self) -> list[int]:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._refresh)
        ids = self.devices.ids()
        stale = {cid: reason for cid, admitted in list(self._admitted.items())
                 if (reason := self._stale(admitted, ids)) is not None}
        kicked = []
        for cid, reason in stale.items():
            admitted = self._admitted.pop(cid, None)
            if admitted is None:  # gone meanwhile
                continue
            if await self._kick(cid):
                kicked.append(cid)
                log.warning("broker connection of a device closed", device=admitted.device,
                            client_id=admitted.client_id, reason=reason, cid=cid)
        return kicked

    async def _kick(self, cid: int) -> bool:
        if self._sys is None or self._server_id is None:
            log.error("cannot disconnect a device: no system account connection", cid=cid)
            return False
        subject = KICK_SUBJECT.format(server_id=self._server_id)
        try:
            reply = await self._sys.request(subject, json.dumps({"cid": cid}).encode(), timeout=2)
            error = json.loads(reply.data).get("error")
        except Exception as exc:
            log.warning("kicking a broker connection failed", cid=cid, error=repr(exc))
            return False
        return not error  # "no such client": it had gone already

    def enforce(self, timeout: float = 10.0) -> list[int]:
        """Close connections admitted earlier that the registry no longer allows (revoked or
        re-issued devices, client ids now another device's) or whose certificate was revoked
        (`certs`); returns their connection ids."""
        if self._loop is None:
            return []
        return asyncio.run_coroutine_threadsafe(self._enforce(), self._loop).result(timeout)

    def admitted(self) -> dict[int, Admitted]:
        """Open connections this service admitted, by connection id (a copy)."""
        return self._admitted.copy()
