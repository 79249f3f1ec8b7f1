"""A private, real Orthanc for tests and benchmarks: its own config, storage and loopback ports.

Why: fronting a PACS is only believable against a real one. The Debian ``orthanc``
package's binary runs here as a child process; the system service (if any) is never
touched. Data goes in through the REST API, as a hospital's PACS would have it.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from node.testing.nodes import free_port as _free_port

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
ORTHANC_AE = "ORTHANC"


class OrthancError(Exception):
    """The test Orthanc could not be started or did not answer as expected."""


def _die_with_parent() -> None:
    """In the child before exec: if the test process dies, so does its Orthanc."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)



def orthanc_config(storage: Path, dicom_port: int, http_port: int,
                   modalities: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """Only the AEs in ``modalities`` may associate: every 'always allow' is off, so
    Orthanc rejects an unknown calling AE at association time, as a locked-down
    hospital PACS does."""
    return {
        "Name": "medfed-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AE,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": False,
        "DicomModalities": {ae: [ae, host, port] for ae, (host, port) in modalities.items()},
        "DicomAssociationCloseDelay": 0,
        "StableAge": 1,
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
        "MetricsEnabled": False,
        "StorageCompression": False,
        "OverwriteInstances": False,
    }


@dataclass
class Orthanc:
    """One running private Orthanc; use as a context manager or call stop()."""

    modalities: dict[str, tuple[str, int]]
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orthanc-")))
    dicom_port: int = 0
    http_port: int = 0
    extra_config: dict[str, Any] = field(default_factory=dict)   # e.g. plugins (benchmarks)
    _proc: subprocess.Popen[bytes] | None = None
    _owns_workdir: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> "Orthanc":
        if not ORTHANC_BIN.exists():
            raise OrthancError(f"{ORTHANC_BIN} is missing: apt-get install orthanc")
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or _free_port()
        self.http_port = self.http_port or _free_port()
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps({**orthanc_config(storage, self.dicom_port, self.http_port,
                                                       self.modalities), **self.extra_config},
                                     indent=1))
        log = open(self.workdir / "orthanc.log", "wb")
        env = dict(os.environ, TCP_NODELAY="1")
        self._proc = subprocess.Popen([str(ORTHANC_BIN), str(config)], stdout=log,
                                      stderr=subprocess.STDOUT, env=env,
                                      cwd=self.workdir, start_new_session=True,
                                      preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self._proc.returncode}:\n"
                                   + self.log_tail())
            try:
                self.rest("GET", "/system", timeout=1.0)
                return self
            except (OSError, OrthancError):
                time.sleep(0.1)
        self.stop(graceful=False)
        raise OrthancError(f"Orthanc did not answer on port {self.http_port} "
                           f"within {timeout} s:\n{self.log_tail()}")

    def stop(self, graceful: bool = True) -> None:
        """Stop our own process by its PID (never any other Orthanc). Graceful takes
        Orthanc ~3 s; a kill is instant and, for a throw-away store, just as good."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def cleanup(self) -> None:
        self.stop(graceful=False)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.workdir / "orthanc.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- REST -------------------------------------------------------------------
    def rest(self, method: str, path: str, body: bytes | None = None,
             timeout: float = 30.0, content_type: str = "application/dicom") -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as rsp:
                raw = rsp.read()
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"Orthanc {method} {path}: HTTP {exc.code} "
                               f"{exc.read()[:300]!r}") from exc
        return json.loads(raw) if raw else None

    def upload(self, files: Iterable[Path]) -> list[str]:
        """POST each Part-10 file to /instances; returns Orthanc's instance ids."""
        ids = []
        for path in files:
            answer = self.rest("POST", "/instances", path.read_bytes())
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise OrthancError(f"Orthanc refused {path.name}: {answer}")
            ids.append(answer["ID"])
        return ids

    def statistics(self) -> dict[str, Any]:
        return dict(self.rest("GET", "/statistics"))

    def instance_file(self, orthanc_id: str) -> bytes:
        req = urllib.request.Request(f"{self.url}/instances/{orthanc_id}/file")
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return bytes(rsp.read())
