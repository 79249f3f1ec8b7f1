"""A realistic archive's metadata without pixel data, for scale figures anyone can
reproduce (``medfed synth --metadata-only``).

Shape (as measured at a hospital archive, issue 12): per 1,000 instances about 5.6
patients, 11.5 studies and 23 series; modalities CT, MR, CR, US, DX, MG, PT in
realistic proportions; study dates over ten years; patient names from a pool of
50,000 family and 2 x 3,000 given names with Zipf-like frequencies
(``node.synth.name_pool``). The records go through the same row
functions a C-STORE commits through for patients, studies and series
(``MetadataWriter.ingest_pathless``; the instances of a batch in one statement), many
per transaction, with ``source='synthetic'`` and no file: the node answers C-FIND and
federated queries on them, and refuses to retrieve them with a clear status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from ..store.db import MetadataStore
from ..store.records import InstanceRec, InstanceRecord, PatientRec, SeriesRec, StudyRec
from ..store.writer import SqlConnection
from .name_pool import name_pool
from .names import INSTITUTIONS

SOURCE = "synthetic"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_UID_ROOT = "1.2.826.0.1.3680043.10.1137"   # a private root for synthetic UIDs
_MODALITIES = (("CT", 35), ("MR", 25), ("CR", 15), ("US", 10), ("DX", 8), ("MG", 4), ("PT", 3))
_BODY_PARTS = ("CHEST", "HEAD", "ABDOMEN", "PELVIS", "SPINE", "KNEE", "BREAST", "HAND")
_FIRST_DAY = dt.date(2015, 1, 1)
_DAYS = 3652


class SynthStoreError(ValueError):
    """The metadata-only archive cannot be written (bad size, store in use)."""


@dataclass(frozen=True)
class FillReport:
    instances: int
    patients: int
    studies: int
    series: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0


def archive_records(instances: int, seed: int = 1, *, site: str = "S") -> Iterator[InstanceRecord]:
    """``instances`` instance records of a plausible archive, patient by patient."""
    if instances < 1:
        raise SynthStoreError("--instances must be at least 1")
    rng = random.Random(seed)
    modalities = [m for m, w in _MODALITIES for _ in range(w)]
    names = name_pool()
    made = 0
    patient = 0
    while made < instances:
        patient += 1
        female = rng.random() < 0.5
        name = names.patient_name(rng, female)
        born = _FIRST_DAY - dt.timedelta(days=rng.randrange(365 * 5, 365 * 90))
        pat = PatientRec(pid=f"{site}{seed:02d}-{patient:08d}", name=name,
                         birth_date=born.strftime("%Y%m%d"), sex="F" if female else "M")
        for study in range(rng.choice((1, 1, 2, 2, 2, 3, 3, 4))):
            day = _FIRST_DAY + dt.timedelta(days=rng.randrange(_DAYS))
            suid = f"{_UID_ROOT}.{seed}.{patient}.{study + 1}"
            st = StudyRec(uid=suid, date=day.strftime("%Y%m%d"),
                          time=f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}00",
                          accession=f"A{seed:02d}{patient:07d}{study}",
                          study_id=str(study + 1), description="SYNTHETIC STUDY",
                          institution=rng.choice(INSTITUTIONS))
            modality = rng.choice(modalities)
            part = rng.choice(_BODY_PARTS)
            for series in range(rng.choice((1, 2, 2, 3))):
                se = SeriesRec(uid=f"{suid}.{series + 1}", modality=modality, body_part=part,
                               number=series + 1, date=st.date, time=st.time,
                               description=f"{modality} {part} {series + 1}")
                for number in range(1, rng.randrange(10, 78) + 1):
                    inst = InstanceRec(sop_uid=f"{se.uid}.{number}", sop_class_uid=CT_IMAGE,
                                       transfer_syntax=EXPLICIT_LE, number=number, rows=512,
                                       columns=512, position_z=float(number))
                    yield InstanceRecord(pat, st, se, inst)
                    made += 1
                    if made == instances:
                        return


async def fill_store(store: MetadataStore, instances: int, *, seed: int = 1,
                     batch: int | None = None,
                     progress: Callable[[int], None] | None = None) -> FillReport:
    """Commit ``instances`` synthetic records into an open store, ``batch`` per
    transaction (``MetadataWriter.ingest_pathless``: the row functions C-STORE uses
    for patients, studies and series; the instances in one statement), off the event
    loop."""
    if batch is None:
        batch = 5000
    before = await store.counts()
    started = time.perf_counter()
    records = archive_records(instances, seed)
    writer = store.writer
    done = 0
    while True:
        chunk = [r for _, r in zip(range(batch), records)]
        if not chunk:
            break

        def work(conn: SqlConnection, chunk: list[InstanceRecord] = chunk) -> None:
            writer.ingest_pathless(conn, chunk, SOURCE, time.time())
        await asyncio.to_thread(writer.run, work)
        done += len(chunk)
        if progress is not None:
            progress(done)
    await store.refresh_statistics()
    after = await store.counts()
    return FillReport(after.instances - before.instances, after.patients - before.patients,
                      after.studies - before.studies, after.series - before.series,
                      time.perf_counter() - started)
