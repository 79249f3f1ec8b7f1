"""Claims on SOP Instance UIDs (node/pacs/ledger.py): one holder at a time, waiters
granted in order by the release before them, no polling."""

from __future__ import annotations

import threading

from node.pacs.ledger import Claims


def test_a_claim_is_granted_at_once_when_free_and_in_order_after_releases() -> None:
    claims = Claims()
    granted: list[str] = []
    claims.acquire("1.2.3", lambda: granted.append("first"))
    claims.acquire("1.2.3", lambda: granted.append("second"))
    claims.acquire("1.2.3", lambda: granted.append("third"))
    claims.acquire("1.2.4", lambda: granted.append("other key"))
    assert granted == ["first", "other key"]
    claims.release("1.2.3")
    assert granted == ["first", "other key", "second"]
    claims.release("1.2.3")
    claims.release("1.2.3")
    assert granted[-1] == "third"
    claims.release("1.2.4")
    assert len(claims) == 0
    claims.release("1.2.3")   # releasing a free key changes nothing
    assert len(claims) == 0


def test_threads_holding_one_key_never_overlap() -> None:
    claims = Claims()
    inside = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(200):
            with claims.held("1.2.3"):
                with lock:
                    inside += 1
                    most = max(most, inside)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most == 1
    assert len(claims) == 0
