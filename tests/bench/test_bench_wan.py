"""The arithmetic behind bench/RESULTS.md's "wan" section: link specs, link limit,
speed-ups and targets, Orthanc's JSON, /proc status parsing. No network."""

from __future__ import annotations

import json

import pytest

from bench.wan_links import (
    Link,
    LinkSpecError,
    Row,
    load_orthanc_json,
    parse_links,
    table,
    vm_rss_kb,
)


def test_parse_links_reads_rate_and_one_way_delay() -> None:
    links = parse_links("100:10 1000:10,100:40")
    assert links == [Link(100, 10), Link(1000, 10), Link(100, 40)]
    assert [l.rtt_ms for l in links] == [20, 20, 80]
    assert links[0].spec == "100:10"


@pytest.mark.parametrize("bad", ["", "100", "100:10:2", "x:10", "0:10", "100:-1"])
def test_parse_links_refuses_bad_specs(bad: str) -> None:
    with pytest.raises(LinkSpecError):
        parse_links(bad)


def test_link_limit_is_serialisation_plus_one_round_trip() -> None:
    link = Link(100, 10)
    # 12.5 MB at 100 Mbit/s is 1 s, plus 20 ms RTT
    assert link.limit_s(12_500_000) == pytest.approx(1.02)
    assert Link(1000, 10).limit_s(56_400_000) == pytest.approx(0.4512 + 0.02)


def test_row_speedup_and_targets() -> None:
    fast = Row(Link(100, 10), "owner", 4.6, 56_400_000, cget_s=18.9)
    assert fast.speedup == pytest.approx(18.9 / 4.6)
    assert fast.vs_limit == pytest.approx(4.6 / (56_400_000 * 8 / 1e8 + 0.02))
    assert fast.limit_met and fast.speedup_met
    slow = Row(Link(1000, 10), "owner down", 1.9, 56_400_000, cget_s=8.3)
    assert not slow.limit_met and slow.speedup_met is False   # 4.4x < 10x
    no_target = Row(Link(100, 40), "owner", 5.0, 56_400_000, cget_s=37.1)
    assert no_target.speedup_met is None
    assert Row(Link(100, 10), "owner", 5.0, 1, cget_s=None).speedup is None


def test_table_marks_misses() -> None:
    rows = [Row(Link(1000, 10), "owner", 0.64, 56_400_000, cget_s=8.3)]
    lines = table(rows)
    assert lines[2].startswith("| 1000 Mbit/s, 20 ms RTT | owner | 0.64 | 8.30 | 13.0× | ≥ 10× |")
    assert "**no**" in lines[2] and lines[2].endswith("| yes |")


def test_cold_rows_compare_with_the_new_connection_floor() -> None:
    cold = Row(Link(1000, 10), "owner, cold process", 0.53, 56_400_000, cget_s=None,
               new_connection=True)
    assert cold.floor_s == pytest.approx(0.4512 + 0.04)      # bytes / rate + 2 RTT
    assert cold.vs_floor == pytest.approx(0.53 / 0.4912)
    warm = Row(Link(1000, 10), "owner, warm pool", 0.48, 56_400_000, cget_s=None)
    assert warm.floor_s is None and warm.vs_floor is None
    lines = table([cold, warm])
    assert "| medfed / new-connection floor |" in lines[0]
    assert lines[2].endswith("| **no** | 1.08 | - |") and lines[3].endswith("| yes | - | - |")


def test_orthanc_json_by_link() -> None:
    doc = {"links": [{"rate_mbit": 100.0, "rtt_ms": 20.0, "cget": {"seconds": 18.9},
                      "raw_stream_zstd": {"seconds": 5.3}, "raw_stream": {"seconds": 12.8}}]}
    got = load_orthanc_json(json.dumps(doc))
    assert got[(100.0, 20.0)].cget_s == 18.9 and got[(100.0, 20.0)].rawz_s == 5.3
    with pytest.raises(KeyError):
        load_orthanc_json(json.dumps({"links": [{"rate_mbit": 1}]}))


def test_vm_rss_from_proc_status() -> None:
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t4\n"
    assert vm_rss_kb(status) == 123456
    assert vm_rss_kb("Name:\tzombie\nState:\tZ\n") == 0


def test_spent_output_is_emptied_and_moved_aside_not_deleted(tmp_path) -> None:
    from bench.wan_requester import spend

    spent = tmp_path / "spent"
    for n in range(2):
        out = tmp_path / "out"
        (out / "series").mkdir(parents=True)
        for i in range(3):
            (out / "series" / f"{i}.dcm").write_bytes(b"x" * 1000)
        inodes = {p.stat().st_ino for p in (out / "series").iterdir()}
        spend(out, spent)
        assert not out.exists()
        moved = sorted(spent.iterdir())[n] / "series"
        assert {p.stat().st_ino for p in moved.iterdir()} == inodes   # the same files, kept
        assert all(p.stat().st_size == 0 for p in moved.iterdir())     # and emptied
    spend(tmp_path / "never-written", spent)                            # nothing to do
    assert len(list(spent.iterdir())) == 2


def test_rebindable_ports_lie_below_the_ephemeral_range_and_are_free() -> None:
    import random
    import socket

    from bench.wan_proxy_ctl import ephemeral_range, rebindable_ports

    assert ephemeral_range("32768\t60999\n") == (32768, 60999)
    low, _ = ephemeral_range()
    ports = rebindable_ports(14, rng=random.Random(3))
    assert len(set(ports)) == 14 and all(10_000 <= p < low for p in ports)
    for port in ports:                      # free for both the proxy (TCP) and the DHT (UDP)
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))


def test_rebindable_ports_skip_a_taken_port() -> None:
    import random
    import socket

    from bench.wan_proxy_ctl import rebindable_ports

    first = rebindable_ports(1, rng=random.Random(5))[0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        again = rebindable_ports(1, rng=random.Random(5))[0]   # same draws, first one busy
    assert again != first
