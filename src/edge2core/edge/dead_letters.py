"""Dead letters: device messages that failed every attempt for reasons nobody foresaw.

Each is kept durably (raw payload and a JSON note with the reason, fsync'd) before the broker is
told it is done, so "acknowledged means kept" holds even for a message that crashes our code.
An operator reads them with `edge2core edge dead-letters` and can publish a payload again once
the bug is fixed.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from edge2core.common.fsutil import write_atomic


@dataclass(frozen=True)
class DeadLetter:
    """One kept message: `id` is the sha256 of topic and payload."""

    id: str
    topic: str
    size: int
    reason: str
    error: str
    kept_at: float


class DeadLetters:
    def __init__(self, root: Path) -> None:
        self.root = root

    def keep(self, topic: str, payload: bytes, exc: BaseException, reason: str) -> DeadLetter:
        """Write payload then note, both fsync'd; the note last, so a note means a whole file."""
        letter_id = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()
        letter = DeadLetter(
            id=letter_id, topic=topic, size=len(payload), reason=reason,
            error=f"{type(exc).__name__}: {exc}"[:2000], kept_at=time.time(),
        )
        write_atomic(self.root / f"{letter_id}.bin", [payload])
        note = {
            **letter.__dict__,
            "traceback": "".join(traceback.format_exception(exc))[-8000:],
        }
        write_atomic(self.root / f"{letter_id}.json", [json.dumps(note, indent=2).encode()])
        return letter

    def list(self) -> list[DeadLetter]:
        letters = []
        for path in sorted(self.root.glob("*.json")):
            note = json.loads(path.read_text())
            note.pop("traceback", None)
            letters.append(DeadLetter(**note))
        return sorted(letters, key=lambda letter: letter.kept_at)

    def payload(self, letter_id: str) -> bytes:
        return (self.root / f"{letter_id}.bin").read_bytes()
