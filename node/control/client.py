"""The CLI's side of the control socket: plain blocking calls, no event loop needed.

``http.client`` speaks HTTP/1.1 (incl. chunked streaming) over any socket, so a Unix
socket connection is all it needs; the CLI draws its progress bar from the NDJSON lines
of a fetch as they arrive.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from node.control.actor import Actor

STATUS_TIMEOUT_S = 5.0
STREAM_MARGIN_S = 30.0       # beyond the fetch deadline, for the node's final answer
MAX_LINE = 1 << 20

FetchProgressFn = Callable[[int, int], None]    # (bytes received, instances decoded)


class ControlError(Exception):
    """A control call failed; the message is meant for the person at the terminal."""


class ControlUnavailable(ControlError):
    """No node answers on the control socket (not running, or it just stopped)."""


class ControlDenied(ControlError):
    """A node runs, but this OS user may not use its control socket."""


class ControlRefused(ControlError):
    """The node refused the request (4xx/5xx); ``code`` says why in one word."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


class ControlFailed(ControlError):
    """The node accepted the request but the work failed (e.g. the fetch); ``kind`` is the
    error class on the node (FetchRefused, FetchError, SinkError, …)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to a Unix domain socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.fsencode(self.socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    def __init__(self, socket_path: Path, *, timeout_s: float = STATUS_TIMEOUT_S) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s

    # -- plumbing ------------------------------------------------------------------
    def _open(self, method: str, path: str, body: Mapping[str, Any] | None,
              timeout: float) -> tuple[UnixHTTPConnection, http.client.HTTPResponse]:
        conn = UnixHTTPConnection(self.socket_path, timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            conn.close()
            raise ControlUnavailable(f"no node is running on {self.socket_path} "
                                     f"({exc.strerror or exc})") from None
        except PermissionError:
            conn.close()
            raise ControlDenied(f"a node runs on {self.socket_path}, but only its own OS user may "
                                "use it: run this command as that user") from None
        except (TimeoutError, socket.timeout):
            conn.close()
            raise ControlUnavailable(f"the node on {self.socket_path} did not answer within "
                                     f"{timeout:.0f}s") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ControlUnavailable(f"the control socket {self.socket_path} failed: "
                                     f"{type(exc).__name__}: {exc}") from None
        if response.status >= 400:
            try:
                _raise_refusal(response)
            finally:
                conn.close()
        return conn, response

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None,
              timeout: float | None = None) -> dict[str, Any]:
        conn, response = self._open(method, path, body, timeout or self.timeout_s)
        try:
            doc = json.loads(response.read())
        except (ValueError, OSError, http.client.HTTPException) as exc:
            raise ControlUnavailable(f"the node's answer could not be read ({type(exc).__name__})") from None
        finally:
            conn.close()
        if not isinstance(doc, dict):
            raise ControlUnavailable("the node's answer is not a JSON object")
        return doc

    # -- calls -----------------------------------------------------------------------
    def is_running(self) -> bool:
        """True when a node answers on the socket; False when none listens there.
        Raises ControlDenied when one runs but belongs to another OS user."""
        try:
            self.status()
        except ControlUnavailable:
            return False
        except ControlRefused:
            return True
        return True

    def status(self) -> dict[str, Any]:
        """The running node's status (an administrator's call: the OS user is enough)."""
        return self._call("GET", "/v1/status")

    def login(self, user: str, password: str, ttl_s: float) -> str:
        """A token from the running node for this user's password (the node audits a
        refusal); raises ControlRefused (code ``login_failed``) for a wrong password."""
        doc = self._call("POST", "/v1/login", {"user": user, "password": password,
                                                "ttl_s": ttl_s})
        token = doc.get("token")
        if not isinstance(token, str):
            raise ControlUnavailable("the node's login answer carries no token")
        return token

    def query(self, query: Mapping[str, Any], actor: Actor, *, broadcast: bool = False,
              deadline_s: float | None = None) -> dict[str, Any]:
        """The merged FederatedAnswer as JSON (``FederatedAnswer.to_json``)."""
        body: dict[str, Any] = {"query": dict(query), "broadcast": broadcast, **actor.to_json()}
        if deadline_s is not None:
            body["deadline_s"] = deadline_s
        wait = (deadline_s if deadline_s is not None else 60.0) + STREAM_MARGIN_S
        return self._call("POST", "/v1/query", body, timeout=wait)

    def fetch(self, ref: str, out: Path, actor: Actor, *, fmt: str = "dicom", identified: bool = False,
              deadline_s: float = 300.0, progress: FetchProgressFn | None = None) -> dict[str, Any]:
        """Have the node fetch a series into ``out`` (a folder on this machine); calls
        ``progress`` per progress line; returns the result, raises ControlError."""
        body = {"ref": ref, "out": str(Path(out).absolute()), "format": fmt, "identified": identified,
                "deadline_s": deadline_s, **actor.to_json()}
        conn, response = self._open("POST", "/v1/fetch", body, deadline_s + STREAM_MARGIN_S)
        try:
            return _follow(response, None if progress is None else lambda e: progress(
                int(e.get("bytes", 0)), int(e.get("instances", 0))))
        except (OSError, http.client.HTTPException) as exc:
            raise ControlUnavailable(f"the node stopped answering during the fetch "
                                     f"({type(exc).__name__}); it may have been stopped") from None
        finally:
            conn.close()

    def service(self, route: str, body: Mapping[str, Any], actor: Actor, *, timeout_s: float,
                on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Call a service's control route (``/v1/<route>``): ``on_event`` gets each event
        line as it arrives; returns the result, raises ControlFailed with the node's reason."""
        conn, response = self._open("POST", f"/v1/{route}", {**body, **actor.to_json()},
                                    timeout_s + STREAM_MARGIN_S)

        def event(line: dict[str, Any]) -> None:
            if on_event is not None and isinstance(line.get("event"), dict):
                on_event(line["event"])

        try:
            return _follow(response, event)
        except (OSError, http.client.HTTPException) as exc:
            raise ControlUnavailable(f"the node stopped answering ({type(exc).__name__})") from None
        finally:
            conn.close()


def _raise_refusal(response: http.client.HTTPResponse) -> None:
    try:
        doc = json.loads(response.read(MAX_LINE))
        code, reason = str(doc["error"]), str(doc["reason"])
    except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
        code, reason = "http_error", f"the node answered {response.status} {response.reason}"
    raise ControlRefused(response.status, code, reason)


def _follow(response: http.client.HTTPResponse,
            on_line: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Read NDJSON lines until the final result or error line; ``on_line`` gets the others."""
    while True:
        line = response.readline(MAX_LINE)
        if not line:
            raise ControlUnavailable("the node closed the fetch stream without a result; "
                                     "see the node's log")
        try:
            event = json.loads(line)
        except ValueError:
            raise ControlUnavailable("the node sent a malformed progress line") from None
        if not isinstance(event, dict):
            raise ControlUnavailable("the node sent a malformed progress line")
        if "result" in event:
            return dict(event["result"])
        if "error" in event:
            raise ControlFailed(str(event["error"]), str(event.get("kind", "")))
        if on_line is not None:
            on_line(event)


__all__ = ["Actor", "ControlClient", "ControlDenied", "ControlError", "ControlFailed", "ControlRefused",
           "ControlUnavailable", "UnixHTTPConnection"]
