"""Receiver processes: storage associations served outside the node's main process.

Why (issue 15, bench/RESULTS.md "ingest"): one Python process takes 429 instances/s on
one association but only 495 with four senders, against Orthanc's 291 -> 558: the
receive path (PDU parsing, decoding, validation, the journal) runs under one
interpreter lock, so a second core adds little. With ``[dicom] receivers = N`` the
main process still accepts every connection and negotiates the association; one whose
accepted contexts are all storage (or Verification) is handed, socket and all, to the
receiver process with the fewest open associations. The receiver streams, decodes,
validates, journals and writes each instance in its own interpreter and journal; the
metadata rows, the duplicate claim and the audit entries stay single-writer in the
main process, one request each over a local socket (``pool.py`` <-> ``remote.py``).
A receiver's journal is replayed by the main process at start and when the receiver
dies, before a fresh one takes its place.
"""
