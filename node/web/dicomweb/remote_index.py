"""Which site holds a series that a federated QIDO answer showed, so WADO-RS can fetch it.

Filled by series-level federated answers (OHIF asks for a study's series before their
metadata); a UID not found here is resolved by a fresh series-level query. It maps UIDs
to owners only: whether the owner releases the series is decided again at fetch time,
under the asking user's own assertion. Bounded: oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from node.query.dicom_retrieve import SeriesTarget


@dataclass(frozen=True)
class RemoteSeries:
    study_uid: str        # as the answer showed it (keyed, or real when identified)
    series_uid: str       # as the answer showed it
    target: SeriesTarget  # owner + keyed UID to fetch by
    site_ae: str
    site_name: str


class RemoteIndex:
    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._series: OrderedDict[str, RemoteSeries] = OrderedDict()

    def add(self, entry: RemoteSeries) -> None:
        self._series[entry.series_uid] = entry
        self._series.move_to_end(entry.series_uid)
        while len(self._series) > self.capacity:
            self._series.popitem(last=False)

    def series(self, series_uid: str) -> RemoteSeries | None:
        return self._series.get(series_uid)

    def of_study(self, study_uid: str) -> list[RemoteSeries]:
        return [e for e in self._series.values() if e.study_uid == study_uid]
