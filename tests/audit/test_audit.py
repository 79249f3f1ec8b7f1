"""Audit log: the chain, the signed head and recovery must catch every kind of tampering."""

from __future__ import annotations

import json
import os
import resource
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.audit.entry import MAX_TEXT, ref
from node.audit.errors import (AuditClosedError, AuditInputError, AuditLockedError,
                               AuditTamperError, AuditWriteError)
from node.audit.head import SignedHead, head_path_for
from node.audit.log import AuditLog
from node.audit.verify import verify
from node.identity import NodeIdentity


@pytest.fixture(scope="module")
def identity() -> NodeIdentity:
    return NodeIdentity.generate()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.log"


def write_log(path: Path, identity: NodeIdentity | None, n: int) -> None:
    with AuditLog(path, identity) as log:
        for i in range(n):
            log.append("dicom.c-find", f"ae:VIEWER{i % 3}", "ok" if i % 2 else "refused",
                       subject=f"series:{i}", matches=i, level="STUDY")


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def only_problems(path: Path, key: bytes | None) -> list[str]:
    result = verify(path, key)
    assert result.ok is (not result.problems)
    return result.problems


# -- happy path ---------------------------------------------------------------------------

def test_four_threads_append_1000_entries_in_one_linear_chain(log_path: Path,
                                                               identity: NodeIdentity) -> None:
    per_thread = 250
    start = threading.Barrier(4)

    def worker(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            log.append("net.query", f"node:{t}", "ok", subject=f"q:{t}-{i}", thread=t, i=i)

    with AuditLog(log_path, identity) as log:
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert log.last_seq == 4 * per_thread

    result = verify(log_path, identity.verify_key)
    assert result.problems == []
    assert result.ok and result.entries == 1000 and result.last_seq == 1000
    assert result.head_seq == 1000 and result.head_signature_checked
    entries = [json.loads(line) for line in lines_of(log_path)]
    assert [e["seq"] for e in entries] == list(range(1, 1001))
    for t in range(4):  # each thread's own entries stay in the order it wrote them
        mine = [e["detail"]["i"] for e in entries if e["detail"]["thread"] == t]
        assert mine == list(range(per_thread))
    assert all(e["ts"].endswith("Z") and len(e["ts"]) == len("2024-01-01T00:00:00.000Z")
               for e in entries)


def test_reopen_continues_the_chain(log_path: Path, identity: NodeIdentity) -> None:
    write_log(log_path, identity, 3)
    with AuditLog(log_path, identity) as log:
        entry = log.append("keyshare.release", "node:ab", "ok", subject="bundle:1")
    assert entry.seq == 4
    entries = [json.loads(line) for line in lines_of(log_path)]
    assert entries[3]["prev"] == entries[2]["hash"]
    result = verify(log_path, identity.verify_key)
    assert result.ok and result.entries == 4 and result.head_seq == 4


def test_entry_values_are_bounded_and_typed(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        entry = log.append("dicom.c-store", "ae:" + "A" * 1000, "ok", subject="x" * 5000,
                           note="y" * 10_000, n=7, ratio=0.5, flag=True)
    assert len(entry.actor) == MAX_TEXT and len(entry.subject) == MAX_TEXT
    assert len(entry.detail["note"]) == MAX_TEXT  # type: ignore[arg-type]
    stored = json.loads(log_path.read_bytes())
    assert stored["detail"] == {"note": entry.detail["note"], "n": 7, "ratio": 0.5, "flag": True}
    assert len(log_path.read_bytes()) < 2000
    assert verify(log_path).ok


@pytest.mark.parametrize("call", [
    lambda log: log.append("", "actor", "ok"),
    lambda log: log.append("act", "actor", ""),
    lambda log: log.append("act", 42, "ok"),
    lambda log: log.append("act", "actor", "ok", items=[1, 2]),
    lambda log: log.append("act", "actor", "ok", missing=None),
    lambda log: log.append("act", "actor", "ok", x=float("nan")),
    lambda log: log.append("act", "actor", "ok", **{f"k{i}": i for i in range(40)}),
])
def test_bad_append_input_is_refused_and_writes_nothing(log_path: Path, call) -> None:
    with AuditLog(log_path) as log:
        log.append("first", "a", "ok")
        size = log_path.stat().st_size
        with pytest.raises(AuditInputError):
            call(log)
        assert log_path.stat().st_size == size
        assert log.append("second", "a", "ok").seq == 2
    assert verify(log_path).ok


def test_bad_constructor_and_lifecycle_errors(log_path: Path) -> None:
    with pytest.raises(AuditInputError):
        AuditLog(log_path, fsync_interval_s=0)
    log = AuditLog(log_path)
    with pytest.raises(AuditLockedError):
        AuditLog(log_path)  # a second writer would fork the chain
    log.close()
    log.close()  # idempotent
    with pytest.raises(AuditClosedError):
        log.append("late", "a", "ok")
    with AuditLog(log_path) as again:  # the lock is released on close
        assert again.append("next", "a", "ok").seq == 1


def test_background_sync_writes_a_signed_head_without_close(log_path: Path,
                                                            identity: NodeIdentity) -> None:
    with AuditLog(log_path, identity, fsync_interval_s=0.05) as log:
        log.append("net.query", "node:x", "ok")
        log.append("net.query", "node:x", "ok")
        deadline = time.monotonic() + 5
        while not head_path_for(log_path).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        head = SignedHead.parse(head_path_for(log_path).read_bytes())
        assert head.seq == 2 and head.signature_valid(identity.verify_key)
        assert verify(log_path, identity.verify_key).ok


def test_full_disk_gives_a_typed_error_and_no_half_line(log_path: Path) -> None:
    """A write cut short by RLIMIT_FSIZE (a real partial write) is rolled back."""
    with AuditLog(log_path) as log:
        log.append("first", "a", "ok")
        size = log_path.stat().st_size
        old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, old_limit[1]))
            with pytest.raises(AuditWriteError, match="Free disk space"):
                log.append("second", "a", "ok", note="z" * 150)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_handler)
        assert log_path.stat().st_size == size
        assert log.append("third", "a", "ok").seq == 2
    assert verify(log_path).ok


# -- tampering ----------------------------------------------------------------------------

def test_editing_one_field_of_one_line_is_detected(log_path: Path,
                                                   identity: NodeIdentity) -> None:
    write_log(log_path, identity, 30)
    lines = lines_of(log_path)
    entry = json.loads(lines[16])
    assert entry["outcome"] == "refused"
    lines[16] = lines[16].replace(b'"outcome":"refused"', b'"outcome":"ok"')
    log_path.write_bytes(b"".join(lines))
    assert only_problems(log_path, identity.verify_key) == [
        "line 17: entry hash does not match its contents (edited?)"]


def test_edit_with_recomputed_hash_breaks_the_next_link(log_path: Path) -> None:
    from node.audit.entry import build_entry, parse_entry
    write_log(log_path, None, 30)
    lines = lines_of(log_path)
    old = parse_entry(lines[16].rstrip(b"\n"))
    _, forged = build_entry(old.seq, old.ts, old.prev, old.action, old.actor, "ok",
                            old.subject, old.detail)
    lines[16] = forged
    log_path.write_bytes(b"".join(lines))
    problems = only_problems(log_path, None)
    assert problems == ["line 18: chain broken: prev does not match line 17 "
                        "(entry deleted or reordered?)"]


def test_rewriting_the_whole_chain_after_an_edit_is_caught_by_the_head(
        log_path: Path, identity: NodeIdentity) -> None:
    from node.audit.entry import GENESIS, build_entry, parse_entry
    write_log(log_path, identity, 20)
    prev, out = GENESIS, []
    for raw in lines_of(log_path):
        e = parse_entry(raw.rstrip(b"\n"))
        outcome = "ok" if e.seq == 5 else e.outcome
        entry, line = build_entry(e.seq, e.ts, prev, e.action, e.actor, outcome, e.subject,
                                  e.detail)
        prev = entry.hash
        out.append(line)
    log_path.write_bytes(b"".join(out))
    unsigned_copy = log_path.parent / "copy.log"
    unsigned_copy.write_bytes(b"".join(out))
    assert verify(unsigned_copy).ok  # a consistent chain on its own …
    problems = only_problems(log_path, identity.verify_key)
    assert len(problems) == 1 and problems[0].startswith("head says seq 20 has hash")


def test_deleting_a_middle_line_is_detected(log_path: Path, identity: NodeIdentity) -> None:
    write_log(log_path, identity, 30)
    lines = lines_of(log_path)
    del lines[9]
    log_path.write_bytes(b"".join(lines))
    assert only_problems(log_path, identity.verify_key) == [
        "line 10: chain broken: prev does not match line 9 (entry deleted or reordered?)",
        "line 10: seq 11 does not follow seq 9 on line 9 (entry deleted, inserted or "
        "reordered?)"]


def test_swapping_two_lines_is_detected(log_path: Path, identity: NodeIdentity) -> None:
    write_log(log_path, identity, 30)
    lines = lines_of(log_path)
    lines[11], lines[12] = lines[12], lines[11]
    log_path.write_bytes(b"".join(lines))
    problems = only_problems(log_path, identity.verify_key)
    broken = [p.split(":")[0] for p in problems if "chain broken" in p]
    assert broken == ["line 12", "line 13", "line 14"]


def test_truncating_the_last_lines_is_detected_via_the_signed_head(
        log_path: Path, identity: NodeIdentity) -> None:
    write_log(log_path, identity, 40)
    lines = lines_of(log_path)
    log_path.write_bytes(b"".join(lines[:37]))
    assert only_problems(log_path, identity.verify_key) == [
        "head says seq 40 but log ends at 37 (entries removed from the end)"]
    with pytest.raises(AuditTamperError, match="removed from the end"):
        AuditLog(log_path, identity)  # must not re-sign a head over the cut log
    assert SignedHead.parse(head_path_for(log_path).read_bytes()).seq == 40
    assert len(lines_of(log_path)) == 37


def test_deleting_the_head_is_reported_when_a_key_is_given(log_path: Path,
                                                          identity: NodeIdentity) -> None:
    write_log(log_path, identity, 5)
    head_path_for(log_path).unlink()
    problems = only_problems(log_path, identity.verify_key)
    assert len(problems) == 1 and problems[0].startswith("no signed head")


def test_forged_head_signature_is_detected(log_path: Path, identity: NodeIdentity) -> None:
    write_log(log_path, identity, 40)
    lines = lines_of(log_path)
    log_path.write_bytes(b"".join(lines[:37]))
    last = json.loads(lines[36])
    intruder = NodeIdentity.generate()
    forged = SignedHead.sign(intruder, 37, last["hash"], last["ts"])
    head_path_for(log_path).write_bytes(forged.to_bytes())
    assert only_problems(log_path, identity.verify_key) == [
        "head signature invalid (forged, or signed by another node's key)"]
    # same node id but a signature over different content
    genuine = SignedHead.parse(lines_of(head_path_for(log_path))[0])
    altered = SignedHead(37, last["hash"], genuine.ts, identity.node_id_hex,
                         SignedHead.sign(identity, 40, last["hash"], genuine.ts).signature)
    head_path_for(log_path).write_bytes(altered.to_bytes())
    assert "head signature invalid" in only_problems(log_path, identity.verify_key)[0]
    with pytest.raises(AuditTamperError, match="not signed by this node"):
        AuditLog(log_path, identity)


def test_corrupt_last_complete_line_refuses_to_open(log_path: Path) -> None:
    write_log(log_path, None, 5)
    lines = lines_of(log_path)
    lines[-1] = lines[-1].replace(b'"matches":4', b'"matches":5')
    log_path.write_bytes(b"".join(lines))
    before = log_path.read_bytes()
    with pytest.raises(AuditTamperError, match="does not match its hash"):
        AuditLog(log_path)
    assert log_path.read_bytes() == before
    assert only_problems(log_path, None) == [
        "line 5: entry hash does not match its contents (edited?)"]


# -- crash recovery -----------------------------------------------------------------------

def test_torn_last_line_is_moved_aside_and_recorded(log_path: Path,
                                                    identity: NodeIdentity) -> None:
    write_log(log_path, identity, 10)
    whole = lines_of(log_path)
    torn = b'{"action":"dicom.c-get","actor":"ae:VIEW'
    with open(log_path, "ab") as f:
        f.write(torn)
    assert only_problems(log_path, identity.verify_key) == [
        f"line 11: torn last line ({len(torn)} bytes without a newline; crash mid-write?)"]

    with AuditLog(log_path, identity) as log:
        entry = log.append("dicom.c-echo", "ae:X", "ok")
    assert entry.seq == 12
    aside = list(log_path.parent.glob("audit.log.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == torn
    lines = lines_of(log_path)
    assert lines[:10] == whole
    recovered = json.loads(lines[10])
    assert recovered["action"] == "audit.recovered" and recovered["seq"] == 11
    assert recovered["detail"] == {"torn_bytes": len(torn), "moved_to": aside[0].name}
    result = verify(log_path, identity.verify_key)
    assert result.ok and result.entries == 12


def test_entries_written_after_the_last_head_are_fine_after_a_crash(
        log_path: Path, identity: NodeIdentity) -> None:
    """A real kill -9: the child appends, syncs once, appends more, and dies unclosed."""
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from node.audit.log import AuditLog\n"
        "from node.identity import NodeIdentity\n"
        "ident = NodeIdentity.load(Path(sys.argv[2]))\n"
        "log = AuditLog(Path(sys.argv[1]), ident, fsync_interval_s=3600)\n"
        "for i in range(5): log.append('a', 'b', 'ok', i=i)\n"
        "log.sync()\n"
        "for i in range(3): log.append('a', 'b', 'ok', i=i)\n"
        "os.kill(os.getpid(), 9)\n")
    key_dir = log_path.parent.parent / "keys"
    identity.save(key_dir)
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", code, str(log_path), str(key_dir)],
                          timeout=60, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert SignedHead.parse(head_path_for(log_path).read_bytes()).seq == 5
    assert verify(log_path, identity.verify_key).entries == 8
    with AuditLog(log_path, identity) as log:
        assert log.append("after", "b", "ok").seq == 9
    assert verify(log_path, identity.verify_key).ok


# -- verify never raises on garbage -------------------------------------------------------

@pytest.mark.parametrize("content", [
    b"", b"\n", b"\x00\x00\x00", b"not json\n", b"[" * 100_000 + b"\n", b"[1,2]\n",
    b'{"seq":1}\n', b"\xff\xfe\n", b'{"a":1,"a":2}\n',
])
def test_verify_reports_garbage(log_path: Path, content: bytes, identity: NodeIdentity) -> None:
    log_path.parent.mkdir(parents=True)
    log_path.write_bytes(content)
    result = verify(log_path, identity.verify_key)
    assert result.ok is (content == b"")
    assert all(isinstance(p, str) for p in result.problems)


def test_verify_reports_missing_log_and_garbage_head(log_path: Path,
                                                    identity: NodeIdentity) -> None:
    assert verify(log_path).problems[0].startswith("cannot read audit log")
    write_log(log_path, identity, 3)
    head_path_for(log_path).write_bytes(b"\x00garbage")
    problems = only_problems(log_path, identity.verify_key)
    assert problems[0].startswith("head file audit.log.head is not a valid signed head")
    with pytest.raises(AuditTamperError, match="head file is unreadable"):
        AuditLog(log_path, identity)


def test_verify_caps_the_problem_list(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True)
    log_path.write_bytes(b"junk\n" * 5000)
    result = verify(log_path)
    assert not result.ok and len(result.problems) == 201
    assert result.problems[-1] == "... and 4800 more problems"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.binary(max_size=300))
def test_verify_never_raises_on_arbitrary_bytes(content: bytes, head: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.log"
        path.write_bytes(content)
        head_path_for(path).write_bytes(head)
        result = verify(path, NodeIdentity.generate().verify_key)
        assert not result.ok  # arbitrary head bytes are never a valid signed head


# -- privacy helper -------------------------------------------------------------------------

def test_ref_is_short_keyed_and_hides_the_value() -> None:
    salt, other = os.urandom(32), os.urandom(32)
    r = ref("PAT-0012345", salt)
    assert r == ref("PAT-0012345", salt) and len(r) == 16
    assert r != ref("PAT-0012346", salt) and r != ref("PAT-0012345", other)
    assert "0012345" not in r
    with pytest.raises(AuditInputError):
        ref("PAT-0012345", b"short")


# -- cost (printed, not asserted) -----------------------------------------------------------

def test_append_cost_is_printed(log_path: Path, identity: NodeIdentity,
                                capsys: pytest.CaptureFixture[str]) -> None:
    n = 20_000
    with AuditLog(log_path, identity) as log:
        t0 = time.perf_counter()
        for i in range(n):
            log.append("dicom.c-store", "ae:MODALITY1", "ok", subject=f"instance:{i}",
                       bytes=524288, sop_class="1.2.840.10008.5.1.4.1.1.2")
        per_append_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    result = verify(log_path, identity.verify_key)
    verify_us = (time.perf_counter() - t0) / n * 1e6
    assert result.ok and result.entries == n
    with capsys.disabled():
        print(f"\naudit append: {per_append_us:.1f} µs/entry; verify: {verify_us:.1f} µs/entry")
