"""A batch conversion on a LocalCluster that announces every finished file, to be killed.

Run by ``tests/test_dask.py``::

    python batch_run.py SOURCES_DIR TARGETS_DIR MANIFEST SECONDS_PER_FILE

converts every ``*.mrc`` of SOURCES_DIR to ``.mrcz`` in TARGETS_DIR with
``mrcz.batch.convert_files(scheduler='local')`` on two worker processes,
printing ``finished <source>`` as each file finishes. Each conversion first
waits SECONDS_PER_FILE, so the test can kill the run half way.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from mrcz.batch import Job, convert_file, convert_files


@dataclasses.dataclass(frozen=True)
class SlowConvert:
    """:func:`mrcz.batch.convert_file` after a pause (picklable: the workers import it)."""

    seconds: float

    def __call__(self, job: Job, n_threads: int) -> None:
        time.sleep(self.seconds)
        convert_file(job, n_threads)


def jobs_for(sources: str, targets: str) -> list[Job]:
    """One job per ``*.mrc`` of ``sources``, writing ``.mrcz`` into ``targets``."""
    names = sorted(n for n in os.listdir(sources) if n.endswith(".mrc"))
    return [Job(os.path.join(sources, n), os.path.join(targets, n + "z")) for n in names]


def main(sources: str, targets: str, manifest: str, seconds: float) -> None:
    def announce(result, done, total):
        print(f"finished {result.source} {result.status}", flush=True)

    convert_files(jobs_for(sources, targets), scheduler="local", n_workers=2,
                  manifest=manifest, progress=announce, convert=SlowConvert(seconds))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
