"""Which students' pages are open, from their heartbeats: the job manager stops what nobody watches any more.

Not locked: the job manager calls it under its own lock."""

from __future__ import annotations

import re
import time

OWNER_ID = re.compile(r"[0-9a-f]{32}")


def is_owner_id(text: str) -> bool:
    """Whether a link's `me` value is an id this app hands out (32 hex digits); anything else gets a new id."""
    return bool(OWNER_ID.fullmatch(text))


class Presence:
    """Last heartbeat per owner, in monotonic seconds."""

    def __init__(self, grace_s: float, clock=time.monotonic):
        self.grace_s = grace_s
        self._clock = clock
        self._seen: dict[str, float] = {}

    def beat(self, owner: str) -> None:
        """The owner's page is open now."""
        self._seen[owner] = self._clock()

    def alive(self, owner: str) -> bool:
        """Whether the owner's page sent a heartbeat within the grace period."""
        return self._clock() - self._seen.get(owner, -float("inf")) <= self.grace_s

    def online(self, within_s: float) -> int:
        """Owners heard from in the last within_s seconds."""
        now = self._clock()
        return sum(now - seen <= within_s for seen in self._seen.values())

    def silent_for(self, seconds: float) -> set[str]:
        """Owners not heard from for longer than seconds."""
        now = self._clock()
        return {owner for owner, seen in self._seen.items() if now - seen > seconds}

    def forget(self, owner: str) -> None:
        """Drop an owner who has left."""
        self._seen.pop(owner, None)
