"""Background jobs as administrators see and steer them (`solent jobs`, /metrics).

Job arguments name instances, so listing and retrying are administration: the caller needs the
admin permission (checked and audited by the one authorization point, `AccessService.require`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from solent.errors import InvalidInput, NotFound
from solent.services.access import Permission

#: The largest job id either queue's database can hold (a bigint key).
MAX_JOB_ID = 2**63 - 1
MAX_LIST = 10_000

if TYPE_CHECKING:
    from solent.domain.principal import Principal
    from solent.jobs.queue import JobQueue, JobRow
    from solent.services.access import AccessService


class JobsService:
    def __init__(self, queue: JobQueue, access: AccessService) -> None:
        self._queue = queue
        self._access = access

    @property
    def backend(self) -> str:
        return self._queue.backend

    def start_background(self) -> None:
        """Follow the change feed and run jobs in this process (`solent serve`)."""
        self._queue.start()

    def stop_background(self) -> None:
        self._queue.stop()

    def work(self, principal: Principal, *, until_idle: bool) -> None:
        """Follow the feed and run jobs in the foreground: until none waits, or until SIGTERM."""
        self._access.require(principal, Permission.ADMIN, "run background jobs")
        self._queue.work(until_idle=until_idle)

    def list(
        self, principal: Principal, status: str | None = None, limit: int = 50
    ) -> list[JobRow]:
        self._access.require(principal, Permission.ADMIN, "list background jobs")
        if not 1 <= limit <= MAX_LIST:
            raise InvalidInput(f"the limit is 1 to {MAX_LIST} jobs")
        return self._queue.list_jobs(status, limit)

    def retry(self, principal: Principal, job_id: int) -> None:
        self._access.require(principal, Permission.ADMIN, "retry a background job")
        # An id no database key can be is no job (it overflowed the driver: a traceback).
        if not 1 <= job_id <= MAX_JOB_ID:
            raise NotFound(f"no job {job_id}")
        self._queue.retry(job_id)

    def stats(self, principal: Principal) -> dict[str, Any]:
        self._access.require(principal, Permission.ADMIN, "read background job statistics")
        return self._queue.stats()
