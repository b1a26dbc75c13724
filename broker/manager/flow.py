"""Flow control: paused queues, and the broker settings that carry them through a restart.

A paused queue accepts jobs and lets its running jobs finish, but hands out
nothing: dispatch (``dispatch.py``) skips it, so its ready jobs wait in their
ready queues and the consumers with credit wait as usual. Resuming feeds the
consumers waiting on that queue at once.

Settings are the broker-wide state that is not a job (a paused queue, a
limit): a small dict of key -> msgpack value (``settings``), written
through to the journal as ``K`` records (``JournalSink.setting_changed``),
held whole in snapshots, and given back at start (:meth:`Flow.restore_settings`).
"""

from __future__ import annotations

from typing import Any

from broker.manager.config import Consumer
from broker.manager.state import ManagerState

# Setting key of a limit (limits.py): LIMIT + "queue:" or "task:" + name.
LIMIT = "limit:"
# Setting key of a schedule (schedules.py): SCHEDULE + name.
SCHEDULE = "schedule:"

# Setting key of a paused queue: PAUSED + queue name -> True.
PAUSED = "paused:"


class Flow(ManagerState):
    __slots__ = ()

    # -- paused queues ------------------------------------------------------------

    def pause_queue(self, queue: str) -> bool:
        """Start nothing more from ``queue``; False if it was already paused."""
        if queue in self.paused_queues:
            return False
        queue = self._intern(queue)
        self.paused_queues.add(queue)
        self._update_gate()
        self._counts(queue)  # listed in stats from now on
        self._set_setting(PAUSED + queue, True)
        return True

    def resume_queue(self, queue: str, now: float) -> bool:
        """Hand out ``queue``'s jobs again; False if it was not paused."""
        if queue not in self.paused_queues:
            return False
        self.paused_queues.discard(queue)
        self._update_gate()
        self._set_setting(PAUSED + queue, None)
        self._feed_waiting_on(queue, now)
        return True

    def _feed_waiting_on(self, queue: str, now: float) -> None:
        """Every consumer waiting on ``queue`` takes what its credit allows, in waiting order."""
        waiting: dict[Consumer, None] = dict(self._waiting.get(queue) or {})
        for consumers in (self._waiting_tasks.get(queue) or {}).values():
            waiting.update(consumers)
        for consumer in waiting:
            self._feed(consumer, now)

    # -- settings -------------------------------------------------------------------

    def _set_setting(self, key: str, value: Any) -> None:
        if value is None:
            self.settings.pop(key, None)
        else:
            self.settings[key] = value
        if self.journal is not None:
            self.journal.setting_changed(key, value)

    def settings_view(self) -> dict[str, Any]:
        """The settings, for a snapshot."""
        return dict(self.settings)

    def restore_settings(self, settings: dict[str, Any], now: float = 0.0) -> None:
        """Take over settings recovered from a journal (before :meth:`restore`).

        ``now``: for schedules, whose missed ticks fire at the first ``tick``.
        """
        for key, value in settings.items():
            if key.startswith(PAUSED) and value:
                queue = self._intern(key[len(PAUSED) :])
                self.paused_queues.add(queue)
                self._update_gate()
                self._counts(queue)
                self.settings[key] = value
            elif key.startswith(LIMIT) and isinstance(value, dict):
                self.restore_limit(key, value)
            elif key.startswith(SCHEDULE) and isinstance(value, dict):
                self.restore_schedule(key, value, now)
