"""A real RTSP server for camera tests: GStreamer's (gst-rtsp-server), run by the SYSTEM Python
(`/usr/bin/python3` with python3-gi; scripts/install-system-deps.sh installs them), serving an
H.264 Matroska clip at rtsp://127.0.0.1:PORT/cam. Each client gets the clip from its start,
in real time. Standard library and gi only: it never imports edge2core.

    /usr/bin/python3 tests/support/rtsp_server.py PORT CLIP.mkv [USER:PASSWORD]
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, clip = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( filesrc location={clip} ! matroskademux ! h264parse "
                       f"! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(False)
    if len(sys.argv) > 3:  # basic authentication, as cameras ask for it
        user, _, password = sys.argv[3].partition(":")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", user)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role(user)
        permissions.add_permission_for_role(user, "media.factory.access", True)
        permissions.add_permission_for_role(user, "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"could not listen on port {port}")
    print("READY", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
