"""Log the jobs' spooled MLflow records while a local run goes on, not all at its end.

In a local Snakemake run the jobs spool their records (:data:`workflow.tracking.SPOOL_ENV`) and the run's main
process logs them. Logging one record to a SQLite store takes about a quarter of a second, so a study of 67 jobs
used to end with 15-20 s of logging on one core after its last job. :class:`SpoolFlusher` is a thread of the
Snakemake process (``rules/ray.smk`` starts it with the spool) that logs what has been spooled every few seconds,
at a lower priority than the jobs (nice +10 on Linux). The final flush (``onsuccess`` / ``onerror``) stops this
thread, within one record, then logs the rest: the study summary, which annotates variant runs that stage
records create, and the records that log an encoder as an MLflow model (``flush_spool(during_run=True)``).
"""

from __future__ import annotations

import os
import threading

from workflow.tracking import flush_spool

#: Seconds between two looks at the spool.
FLUSH_INTERVAL_S = 5.0


class SpoolFlusher(threading.Thread):
    """A daemon thread that logs the stage records spooled into ``folder`` every ``interval`` seconds.

    ``logged`` counts the records it logged (in the batches that went through). It stops at the first error and
    keeps it in ``error``: the records stay spooled, and the final flush tries them again and reports.
    """

    def __init__(self, folder: str | os.PathLike[str], interval: float = FLUSH_INTERVAL_S) -> None:
        super().__init__(name="strata-spool-flusher", daemon=True)
        self.folder = folder
        self.interval = interval
        self.logged = 0
        self.error: Exception | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:  # below the jobs: logging is the least urgent work of the run
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):  # not Linux, or not allowed: run at the process's priority
            pass
        while not self._halt.wait(self.interval):
            try:
                self.logged += flush_spool(self.folder, during_run=True, halt=self._halt)
            except Exception as err:  # tracking never fails the run; the final flush retries and reports
                self.error = err
                return

    def stop(self) -> None:
        """Stop after the record being logged, if any (the final flush must not run beside it)."""
        self._halt.set()
        if self.is_alive():
            self.join()
