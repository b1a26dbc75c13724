"""The manager's sink as encoded records, for every backend that journals them.

Each change the manager reports becomes one record (``records.py``),
encoded (``codec.py``) and handed to the backend's ``_append``: the file
journal writes it, the cluster's stream journal publishes it.
"""

from __future__ import annotations

from typing import Any

from broker.jobs import Job
from broker.journal.codec import encode_record
from broker.journal.records import (
    changed_record,
    deleted_record,
    reserved_record,
    setting_record,
    submitted_record,
)


class RecordSink:
    def _append(self, record: bytes) -> None:
        raise NotImplementedError

    def job_submitted(self, job: Job) -> None:
        self._append(encode_record(submitted_record(job)))

    def job_changed(self, job: Job) -> None:
        self._append(encode_record(changed_record(job)))

    def job_deleted(self, job_id: str) -> None:
        self._append(encode_record(deleted_record(job_id)))

    def job_reserved(self, job: Job) -> None:
        self._append(encode_record(reserved_record(job)))

    def setting_changed(self, key: str, value: Any) -> None:
        self._append(encode_record(setting_record(key, value)))
