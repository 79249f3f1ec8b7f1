"""Scale benchmark (issue 12): ``python -m bench.scale [--sizes 10000,100000,1000000]
[--stores sqlite,postgresql] [--repeat 25] [--json out.json]``.

One store per backend grows through the sizes (filled by ``node.synth.metadata``, the
rows a C-STORE commits, no pixel data). At each size a node is started on it (start-up
time = ``Node.start()`` until the DICOM port listens) and measured:
- C-FIND p50 per query kind on ONE open association, each repeat with a different
  patient/study/month, through three clients: a lean SCU on the node's own PDU/DIMSE
  code (``bench.find_client``, the headline figure), pynetdicom (in this process; its
  own cost per response is ~3 ms), and dcmtk findscu over one association for three
  kinds; "store" = the node's side without DIMSE: the same identifier answered as
  the SCP does (SQL, then each match encoded to its response bytes). The fixed queries (one month, SMITH^J*)
  return more matches as the archive grows; the "[~10]" / "[~100]" variants are
  narrowed at each size to return about as many (``bench.scale_narrow``: whole days
  from a random study's day, or StudyDate=that day + a StudyTime range when one day
  holds k; the longest name prefix matching >= k studies), and the per-match cost is
  the slope between the ~10 and ~100 date ranges;
- the peer API's query executor (``run_query``: what ``POST /v1/query`` runs, without
  TLS and HTTP) by pseudonym and by modality + month;
- the index publisher's term bookkeeping: first publish (all terms read once) and an
  incremental round after new series (per changed series); DHT network time excluded;
- ``medfed status`` counts, DB size, peak RSS of this process.
The machine is shared and noisy: run it a few times and take the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelFind)

from bench.find_client import LeanFindSCU, findscu_per_query
from bench.scale_narrow import date_terms, name_prefixes
from node.deid.actions import pseudonym
from node.index.publisher import IndexPublisher
from node.pacs.find import find_rows, find_sync
from node.policy import Level
from node.query.model import FederatedQuery
from node.query.serve_sql import run_query
from node.store.db import MetadataStore
from node.synth.metadata import fill_store
from node.testing.nodes import NodeThread, loopback_config
from node.testing.postgres import PrivateCluster

LINK = b"l" * 32
INDEX = b"i" * 32
DEFAULT_SIZES = (10_000, 100_000)
HELD = (10, 100)   # matches the narrowed ("held") lookups are chosen to return


@dataclass
class Secrets:
    index_key: bytes = INDEX
    linkage_key: bytes = LINK


@dataclass
class Membership:
    secrets: Secrets = field(default_factory=Secrets)


@dataclass
class Site:
    store: MetadataStore
    membership: Membership = field(default_factory=Membership)


def p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000 if samples else float("nan")


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


class StoreOnly:
    """Stands in for an association: answers the same identifier the way the SCP does
    (SQLite: ``find_sync`` in the calling thread; PostgreSQL: ``find_rows`` on the
    node's loop) and encodes each match, so the node's share of a C-FIND is measured
    without DIMSE and without a client."""

    def __init__(self, node: NodeThread) -> None:
        self.node = node

    def send_c_find(self, ds: Dataset, model: Any) -> list[tuple[Any, bytes]]:
        name = "PATIENT_ROOT" if model is PatientRootQueryRetrieveInformationModelFind \
            else "STUDY_ROOT"
        store = self.node.node.store
        rows = find_sync(store, ds, name, retrieve_ae="X")
        if rows is None:
            async def run() -> list[Any]:
                return [r async for r in find_rows(store, ds, name, retrieve_ae="X")]
            rows = self.node.call(run(), timeout=3600)
        return [(_PENDING, r.encode(ExplicitVRLittleEndian)) for r in rows]


class _Status:
    Status = 0xFF00


_PENDING = _Status()


def _find(assoc: Any, model: Any, level: str, **keys: str) -> int:
    ds = _identifier(level, keys)
    n = 0
    for status, ident in assoc.send_c_find(ds, model):
        if status and status.Status in (0xFF00, 0xFF01) and ident is not None:
            n += 1
    return n


async def _samples(store: MetadataStore, repeat: int, seed: int) -> dict[str, list[Any]]:
    """Values to query, drawn from the store (different ones per repeat)."""
    rng = random.Random(seed)
    pats = await store.fetchall("SELECT pid, issuer FROM patient_phi ORDER BY patient_id")
    studies = await store.fetchall("SELECT study_uid FROM studies ORDER BY id")
    series = await store.fetchall("SELECT series_uid FROM series ORDER BY id")
    months = sorted({str(d)[:6] for (d,) in await store.fetchall(
        "SELECT DISTINCT substr(study_date, 1, 6) FROM studies") if d})
    out = {"patients": [tuple(rng.choice(pats)) for _ in range(repeat)],
           "studies": [rng.choice(studies)[0] for _ in range(repeat)],
           "series": [rng.choice(series)[0] for _ in range(repeat)],
           "months": [rng.choice(months) for _ in range(repeat)]}
    dated = [(str(d), str(t)) for d, t in await store.fetchall(
        "SELECT study_date, study_time FROM studies")]
    ct_dated = [(str(d), str(t)) for d, t in await store.fetchall(
        "SELECT st.study_date, st.study_time FROM study_modalities sm "
        "JOIN studies st ON st.id = sm.study_id WHERE sm.modality = 'CT'")]
    for k in HELD:
        out[f"dates{k}"] = date_terms(dated, rng, repeat, k)
        out[f"ct_dates{k}"] = date_terms(ct_dated, rng, repeat, k)
    names = [(str(n), int(c)) for n, c in await store.fetchall(
        "SELECT pp.name, count(*) FROM studies st JOIN patient_phi pp "
        "ON pp.patient_id = st.patient_id GROUP BY pp.patient_id, pp.name")]
    out[f"names{HELD[0]}"] = [p for p, _ in name_prefixes(names, rng, repeat, HELD[0])]
    return out


def cfind_kinds(s: dict[str, list[Any]]) -> dict[str, Callable[[Any, int], int]]:
    SR, PR = StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind
    month = lambda i: f"{s['months'][i]}01-{s['months'][i]}28"  # noqa: E731
    k, k2 = HELD
    return {
        "PatientID (study level)": lambda a, i: _find(
            a, PR, "STUDY", PatientID=s["patients"][i][0], StudyInstanceUID="",
            NumberOfStudyRelatedInstances=""),
        "StudyInstanceUID (series level)": lambda a, i: _find(
            a, SR, "SERIES", StudyInstanceUID=s["studies"][i], SeriesInstanceUID="",
            NumberOfSeriesRelatedInstances=""),
        "SeriesInstanceUID (image level)": lambda a, i: _find(
            a, SR, "IMAGE", SeriesInstanceUID=s["series"][i], SOPInstanceUID=""),
        # fixed queries: their number of matches grows with the archive
        "ModalitiesInStudy=CT + month [fixed]": lambda a, i: _find(
            a, SR, "STUDY", ModalitiesInStudy="CT", StudyDate=month(i), StudyInstanceUID="",
            NumberOfStudyRelatedInstances=""),
        "StudyDate, one month [fixed]": lambda a, i: _find(
            a, SR, "STUDY", StudyDate=month(i), StudyInstanceUID="", ModalitiesInStudy=""),
        "PatientName SMITH^J* [fixed]": lambda a, i: _find(
            a, SR, "STUDY", PatientName="SMITH^J*", StudyInstanceUID=""),
        # the same query kinds narrowed so the number of matches stays the same
        f"StudyDate range [~{k} matches]": lambda a, i: _find(
            a, SR, "STUDY", **s[f"dates{k}"][i].keys(), StudyInstanceUID="",
            ModalitiesInStudy=""),
        f"ModalitiesInStudy=CT + date range [~{k}]": lambda a, i: _find(
            a, SR, "STUDY", ModalitiesInStudy="CT", **s[f"ct_dates{k}"][i].keys(),
            StudyInstanceUID="", NumberOfStudyRelatedInstances=""),
        f"PatientName prefix* [~{k}]": lambda a, i: _find(
            a, SR, "STUDY", PatientName=s[f"names{k}"][i], StudyInstanceUID=""),
        f"StudyDate range [~{k2} matches]": lambda a, i: _find(
            a, SR, "STUDY", **s[f"dates{k2}"][i].keys(), StudyInstanceUID="",
            ModalitiesInStudy=""),
        "ModalitiesInStudy=CT (all dates)": lambda a, i: _find(
            a, SR, "STUDY", ModalitiesInStudy="CT", StudyInstanceUID="",
            NumberOfStudyRelatedInstances=""),
    }


def _pynetdicom_scu(node: NodeThread) -> Any:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
    if not assoc.is_established:
        raise RuntimeError("the node refused the benchmark's association")
    # pynetdicom never sets TCP_NODELAY: without it each exchange waits ~40 ms (delayed ACK)
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def _findscu_keys(s: dict[str, list[Any]]) -> dict[str, dict[str, str]]:
    k, k2 = HELD
    return {"StudyDate, one month [fixed]": {
                "StudyDate": f"{s['months'][0]}01-{s['months'][0]}28",
                "StudyInstanceUID": "", "ModalitiesInStudy": ""},
            f"StudyDate range [~{k} matches]": {
                **s[f"dates{k}"][0].keys(), "StudyInstanceUID": "", "ModalitiesInStudy": ""},
            f"StudyDate range [~{k2} matches]": {
                **s[f"dates{k2}"][0].keys(), "StudyInstanceUID": "", "ModalitiesInStudy": ""}}


def measure_cfind(node: NodeThread, samples: dict[str, list[Any]], repeat: int
                  ) -> dict[str, dict[str, float]]:
    lean = LeanFindSCU("127.0.0.1", node.dicom_port, calling_ae="PYNETDICOM",
                       called_ae="MEDFED")
    pyn = _pynetdicom_scu(node)
    out: dict[str, dict[str, float]] = {}
    direct = StoreOnly(node)
    try:
        for name, run in cfind_kinds(samples).items():
            times, store_times, pyn_times, matches = [], [], [], []
            many = "all dates" in name
            for i in range(1 if many else repeat):  # all dates: thousands of matches, once
                t0 = time.perf_counter()
                matches.append(run(lean, i))
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                run(direct, i)
                store_times.append(time.perf_counter() - t0)
                if not many:
                    t0 = time.perf_counter()
                    run(pyn, i)
                    pyn_times.append(time.perf_counter() - t0)
            out[name] = {"p50_ms": p50(times), "store_p50_ms": p50(store_times),
                         "pynetdicom_p50_ms": p50(pyn_times),
                         "matches": statistics.median(matches)}
    finally:
        pyn.release()
        lean.release()
    for name, keys in _findscu_keys(samples).items():
        out[name]["findscu_ms"] = 1000 * findscu_per_query(node.dicom_port, keys)
    k, k2 = HELD
    lo, hi = out[f"StudyDate range [~{k} matches]"], out[f"StudyDate range [~{k2} matches]"]
    span = max(1.0, hi["matches"] - lo["matches"])
    out["per match (date ranges)"] = {
        col: (hi[col] - lo[col]) / span
        for col in ("p50_ms", "store_p50_ms", "pynetdicom_p50_ms", "findscu_ms")}
    return out


async def measure_federated(store: MetadataStore, samples: dict[str, list[Any]], repeat: int
                            ) -> dict[str, dict[str, float]]:
    await store.ensure_pseudonyms(LINK)
    out = {}
    kinds = {
        "by pseudonym": lambda i: FederatedQuery(
            patient_pseudonym=pseudonym(samples["patients"][i][0], samples["patients"][i][1] or "",
                                        LINK)),
        "by modality + month": lambda i: FederatedQuery.from_json({
            "modality": "CT", "study_date_from": f"{samples['months'][i][:4]}-"
            f"{samples['months'][i][4:]}-01", "study_date_to": f"{samples['months'][i][:4]}-"
            f"{samples['months'][i][4:]}-28"}),
    }
    for name, make in kinds.items():
        times, rows = [], []
        for i in range(repeat):
            q = make(i)
            t0 = time.perf_counter()
            res = await run_query(store, q, Level.DEIDENTIFIED, linkage_key=LINK,
                                  uid_key=b"u" * 32, threshold=0)
            times.append(time.perf_counter() - t0)
            rows.append(len(res.rows))
        out[name] = {"p50_ms": p50(times), "matches": statistics.median(rows)}
    return out


async def measure_publisher(store: MetadataStore, size: int) -> dict[str, float]:
    site = Site(store)
    pub = IndexPublisher()
    t0 = time.perf_counter()
    await pub._refresh(site)  # type: ignore[arg-type]
    first = time.perf_counter() - t0
    terms = len(pub.local_counts())
    # new series: a small fill adds ~23 series per 1,000 instances
    await fill_store(store, 2000, seed=size + 17)
    changed = await store.fetchone("SELECT count(DISTINCT modality || body_part) FROM index_changes")
    n_series = int((await store.fetchone(
        "SELECT count(*) FROM index_changes WHERE modality IS NOT NULL"))[0])
    t0 = time.perf_counter()
    await pub._refresh(site)  # type: ignore[arg-type]
    incr = time.perf_counter() - t0
    return {"first_s": first, "terms": terms, "incremental_s": incr,
            "changed_series": n_series, "per_series_ms": 1000 * incr / max(1, n_series),
            "changed_part_terms": int(changed[0]) if changed else 0}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_size(store_kind: str, data_dir: Path, url: str | None, size: int, repeat: int
             ) -> dict[str, Any]:
    cfg = loopback_config(data_dir, name=f"scale-{store_kind}", store_url=url,
                          durability="normal")
    # generous DICOM deadlines: the long all-dates answer must not abort the association
    cfg = replace(cfg, dicom=replace(cfg.dicom, network_timeout_s=900, acse_timeout_s=900,
                                     dimse_timeout_s=900))
    t0 = time.perf_counter()
    node = NodeThread(cfg).start()
    startup = time.perf_counter() - t0
    try:
        store = node.node.store
        t0 = time.perf_counter()
        counts = node.call(store.counts())
        counts_ms = (time.perf_counter() - t0) * 1000
        samples = node.call(_samples(store, repeat, size))
        cfind = measure_cfind(node, samples, repeat)
        federated = node.call(measure_federated(store, samples, repeat), timeout=3600)
        publisher = node.call(measure_publisher(store, size), timeout=3600)
        size_mb = store.size_bytes() / 1e6
    finally:
        node.stop()
    return {"store": store_kind, "instances": counts.instances, "startup_s": startup,
            "status_counts_ms": counts_ms, "cfind": cfind, "federated": federated,
            "publisher": publisher, "db_mb": size_mb, "rss_mb": rss_mb()}


async def grow(data_dir: Path, url: str | None, target: int) -> float:
    """Fill the (stopped) node's store up to ``target`` instances; returns inst/s."""
    async with MetadataStore(data_dir / "medfed.sqlite", durability="normal", url=url) as store:
        have = (await store.counts()).instances
        if have >= target:
            return float("nan")
        report = await fill_store(store, target - have, seed=target)
        return report.rate


def print_table(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(f"\n### {r['store']} @ {r['instances']:,} instances "
              f"(fill {r.get('fill_rate', float('nan')):,.0f} inst/s)")
        print(f"start-up {r['startup_s']:.2f} s | status counts {r['status_counts_ms']:.2f} ms | "
              f"DB {r['db_mb']:.1f} MB | peak RSS {r['rss_mb']:.0f} MB")
        for name, v in r["cfind"].items():
            if name.startswith("per match"):
                print(f"  C-FIND {name:40s} {v['p50_ms']:8.3f} ms/match (store "
                      f"{v['store_p50_ms']:.3f}, pynetdicom {v['pynetdicom_p50_ms']:.3f}, "
                      f"findscu {v['findscu_ms']:.3f})")
                continue
            extra = f", findscu {v['findscu_ms']:.2f} ms" if "findscu_ms" in v else ""
            print(f"  C-FIND {name:40s} p50 {v['p50_ms']:8.2f} ms  (store "
                  f"{v['store_p50_ms']:7.2f} ms, pynetdicom {v['pynetdicom_p50_ms']:8.2f} ms"
                  f"{extra}; {v['matches']:.0f} matches)")
        for name, v in r["federated"].items():
            print(f"  peer query {name:32s} p50 {v['p50_ms']:8.2f} ms  ({v['matches']:.0f} rows)")
        p = r["publisher"]
        print(f"  publisher first publish (terms) {p['first_s']:.2f} s ({p['terms']} terms); "
              f"incremental {p['incremental_s'] * 1000:.1f} ms for {p['changed_series']} new "
              f"series = {p['per_series_ms']:.2f} ms/series")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                    help="instance counts, ascending (e.g. 10000,100000,1000000)")
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--repeat", type=int, default=25)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--pg-url", help="measure this PostgreSQL database (grown to each size "
                    "if smaller; e.g. one filled beforehand to 10^7) instead of a fresh one "
                    "in a private cluster")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results: list[dict[str, Any]] = []
    cluster: PrivateCluster | None = None
    try:
        for kind in args.stores.split(","):
            url = None
            if kind == "postgresql" and args.pg_url:
                url = args.pg_url
            elif kind == "postgresql":
                cluster = cluster or PrivateCluster().start()
                url = cluster.new_database()
            elif kind != "sqlite":
                raise SystemExit(f"unknown store {kind!r} (sqlite or postgresql)")
            data_dir = Path(tempfile.mkdtemp(prefix=f"medfed-scale-{kind}-"))
            try:
                for size in sizes:
                    rate = asyncio.run(grow(data_dir, url, size))
                    r = run_size(kind, data_dir, url, size, args.repeat)
                    r["fill_rate"] = rate
                    results.append(r)
                    print_table([r])
                    sys.stdout.flush()
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)   # 235 MB at 10^6 on SQLite
    finally:
        if cluster is not None:
            cluster.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
