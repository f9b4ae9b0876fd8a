"""The site's doors: every way a device's photo gets in (MQTT, HTTP, AMQP, RTSP cameras, watched
folders, and any protocol a team ships as its own package).

Each door is started through one small interface (`plugin.Door`, made by a `plugin.DoorFactory`)
and found through the Python entry-point group `edge2core.doors` (`registry`). Every door hands
photos to the one `Gateway`, so preparation, privacy and de-duplication are the same whichever
way a photo came in. See docs/doors.md.
"""
