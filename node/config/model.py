"""One NodeConfig, read from the node's TOML file.

Every other part takes plain values from here through its constructor, so that the
simulator can build hundreds of nodes in one process without touching files.
Paths in the file are relative to the file's own folder.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.net.idle import PEER_IDLE_TIMEOUT_S

AE_TITLE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")


class ConfigError(Exception):
    """The configuration file is missing a value or holds one that cannot work."""


@dataclass(frozen=True)
class AllowedPeer:
    """A calling AE title and the host it must come from ('*' = any host)."""

    ae_title: str
    host: str = "*"

    @classmethod
    def parse(cls, text: str) -> "AllowedPeer":
        ae, _, host = text.partition("@")
        ae = ae.strip()
        if not AE_TITLE_RE.match(ae) or "\\" in ae or not ae.strip():
            raise ConfigError(f"invalid AE title in allowlist entry {text!r}")
        host = host.strip() or "*"
        return cls(ae, host)

    def matches(self, ae_title: str, host: str) -> bool:
        return self.ae_title == ae_title.strip() and self.host in ("*", host)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}"


@dataclass(frozen=True)
class Destination:
    """A C-MOVE destination: AE title -> host:port."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class DicomConfig:
    ae_title: str = "MEDFED"
    host: str = "127.0.0.1"
    port: int = 11112
    allow: tuple[AllowedPeer, ...] = ()
    destinations: tuple[Destination, ...] = ()
    # calling AE title -> local user name: whom a C-FIND/C-GET to the federation AE title
    # is made for (role, department, purposes come from that user's record)
    users: tuple[tuple[str, str], ...] = ()
    federation_ae_title: str = "FEDERATION"
    # the hospital PACS the web app's "fetch to home PACS" moves series to: an AE title
    # of ``destinations`` ("" = the action is not offered)
    home_pacs: str = ""
    max_pdu: int = 0  # 0 = unlimited
    network_timeout_s: float = 30.0
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 30.0
    max_associations: int = 64
    # storage associations served by this many receiver processes (node/pacs/receivers);
    # -1 = one per CPU core up to 4 when there are two or more, 0 = all in the main process
    receivers: int = -1
    # DICOM TLS (PS3.15 B.1, BCP 195 profile) on a second port; None = off. tls_ca set:
    # callers must present a certificate signed by it (their AE still needs "allow").
    tls_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    def destination(self, ae_title: str) -> Destination | None:
        for dest in self.destinations:
            if dest.ae_title == ae_title.strip():
                return dest
        return None

    def user_for(self, ae_title: str) -> str | None:
        """The local user a calling AE title acts for at the federation AE title."""
        return dict(self.users).get(ae_title.strip())

    def is_allowed(self, ae_title: str, host: str) -> bool:
        return any(p.matches(ae_title, host) for p in self.allow)


@dataclass(frozen=True)
class UpstreamConfig:
    """An existing PACS the node fronts without modifying it."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str = ""  # defaults to the node's own AE title
    sync_interval_s: float = 300.0
    sync_lookback_days: int = 1
    cache_max_mb: float = 2048.0
    retrieve: str = "get"  # "get" (C-GET) or "move" (C-MOVE to this node)
    timeout_s: float = 30.0


@dataclass(frozen=True)
class FederationSettings:
    """How this node takes part in the federation (query fan-out, sharing, index)."""

    query_deadline_s: float = 5.0
    hedge_after_s: float = 1.0       # re-send to a peer silent this long after the request left
    max_parallel: int = 32           # concurrent peer requests of one query
    shares_k: int = 3                # key shares needed to decrypt a bundle
    shares_n: int = 5                # key shares handed out
    replicas: int = 2                # encrypted replicas per bundle
    index_republish_s: float = 600.0 # DHT index records are republished this often
    repair_interval_s: float = 300.0
    roster_push_fanout: int = 6      # members a newly adopted roster is pushed to at once
    roster_pull_interval_s: float = 10.0  # anti-entropy: offer/fetch rosters this often
    roster_pull_peers: int = 3       # members asked per anti-entropy round
    warm_peers: int = 32             # members whose peer connections are kept open
    peer_idle_timeout_s: float = PEER_IDLE_TIMEOUT_S  # a peer connection unused this long is closed


def default_policy() -> dict[str, Any]:
    """Out of the box: de-identified answers to clinicians and researchers of member
    sites, counts to everyone else; PHI only by an explicit rule the site adds."""
    return {"small_count_threshold": 5, "rule": [
        {"name": "members: de-identified", "site": "*", "role": ["clinician", "researcher"],
         "level": "deidentified"},
        {"name": "members: counts", "site": "*", "level": "count"},
    ], "similarity_methods": ["hist", "embed"], "similarity_release": "diagnosis"}


@dataclass(frozen=True)
class NodeConfig:
    name: str
    data_dir: Path
    dicom: DicomConfig = field(default_factory=DicomConfig)
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_cert: Path | None = None     # the hospital's TLS certificate for the web port (PEM)
    http_key: Path | None = None      # its private key (PEM)
    http_session_idle_s: float = 900.0
    http_persist_sessions: bool = True  # sessions survive a restart (hashed ids on disk)
    peer_host: str = "127.0.0.1"
    peer_port: int = 8443
    dht_host: str = ""               # bind address of the DHT (UDP); "" = peer_host
    dht_port: int = 8468
    advertise_host: str = ""         # what other members dial; "" = the bind host
    upstream: UpstreamConfig | None = None
    series_idle_s: float = 30.0
    durability: str = "full"  # sqlite synchronous level: "full" or "normal"
    federation: FederationSettings = field(default_factory=FederationSettings)
    policy: dict[str, Any] = field(default_factory=default_policy)
    source: Path | None = None
    store_url: str | None = None     # [store] url: postgresql://... (default: SQLite file)
    store_readers: int = 4           # [store] readers: pooled read connections
    store_cache_mb: int = 32         # [store] cache_mb: SQLite page cache per connection

    @property
    def db_path(self) -> Path:
        return self.data_dir / "medfed.sqlite"

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def key_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def dht_bind_host(self) -> str:
        return self.dht_host or self.peer_host

    @property
    def peer_advertise(self) -> str:
        """``host:port`` of the peer API as other members dial it (admission request)."""
        from .addresses import advertised
        return advertised(self.advertise_host, self.peer_host, self.peer_port)

    @property
    def dht_advertise(self) -> str:
        from .addresses import advertised
        return advertised(self.advertise_host, self.dht_bind_host, self.dht_port)

    @property
    def users_path(self) -> Path:
        return self.data_dir / "users.sqlite"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.log"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "medfed.log"


# -- loading -----------------------------------------------------------------

def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _get(table: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = table.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key} must be {kind.__name__}, got {value!r}")
    return value


def _port(table: dict[str, Any], key: str, default: int, where: str) -> int:
    port = _get(table, key, int, default, where)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}.{key} = {port} is not a TCP/UDP port (0-65535)")
    return port


def _ae(value: str, where: str) -> str:
    if not AE_TITLE_RE.match(value) or "\\" in value or not value.strip():
        raise ConfigError(f"{where} = {value!r} is not a valid AE title (1-16 printable chars)")
    return value.strip()


def _host(value: str, where: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.-]+$", value):
            raise ConfigError(f"{where} = {value!r} is not a host name or address") from None
    return value


def _hostport(text: str, where: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where} = {text!r} must be HOST:PORT")
    return _host(host, where), int(port)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost': the only places plain HTTP may listen."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_tls(http: dict[str, Any], base_dir: Path) -> tuple[Path | None, Path | None]:
    cert = _get(http, "cert", str, "", "http")
    key = _get(http, "key", str, "", "http")
    if bool(cert) != bool(key):
        raise ConfigError("[http] needs both cert and key (PEM files), or neither")
    if not cert:
        return None, None
    return ((base_dir / cert).resolve(), (base_dir / key).resolve())


def _receivers(value: int) -> int:
    if not -1 <= value <= 16:
        raise ConfigError(f"dicom.receivers must be -1 (one per CPU core), 0 (none) or up "
                          f"to 16 processes, not {value}")
    return value


def _dicom_tls(dicom: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """[dicom] tls_port / tls_cert / tls_key / tls_ca: all paths relative to the config."""
    if "tls_port" not in dicom:
        return {}
    paths: dict[str, Any] = {}
    for key in ("tls_cert", "tls_key", "tls_ca"):
        value = _get(dicom, key, str, "", "dicom")
        if value:
            path = Path(value)
            paths[key] = path if path.is_absolute() else (base_dir / path).resolve()
    if "tls_cert" not in paths or "tls_key" not in paths:
        raise ConfigError("dicom.tls_port needs dicom.tls_cert and dicom.tls_key "
                          "(PEM certificate and private key of this node's DICOM TLS port)")
    return {"tls_port": _port(dicom, "tls_port", 2762, "dicom"), **paths}


def parse_config(raw: dict[str, Any], base_dir: Path, source: Path | None = None) -> NodeConfig:
    node = _section(raw, "node")
    dicom = _section(raw, "dicom")
    http = _section(raw, "http")
    peer = _section(raw, "peer")
    dht = _section(raw, "dht")
    ingest = _section(raw, "ingest")

    name = _get(node, "name", str, "medfed node", "node")
    data_dir = Path(_get(node, "data_dir", str, "data", "node"))
    if not data_dir.is_absolute():
        data_dir = (base_dir / data_dir).resolve()

    allow = tuple(AllowedPeer.parse(x) for x in _get(dicom, "allow", list, [], "dicom"))
    dest_table = _get(dicom, "destinations", dict, {}, "dicom")
    destinations = []
    for ae, target in dest_table.items():
        if not isinstance(target, str):
            raise ConfigError(f"dicom.destinations.{ae} must be \"HOST:PORT\"")
        host, port = _hostport(target, f"dicom.destinations.{ae}")
        destinations.append(Destination(_ae(ae, "dicom.destinations"), host, port))

    users_table = _get(dicom, "users", dict, {}, "dicom")
    for ae, user in users_table.items():
        _ae(ae, "dicom.users")
        if not isinstance(user, str) or not user:
            raise ConfigError(f"dicom.users.{ae} must be the name of a local user "
                              "(see 'medfed user add')")
    home_pacs = _get(dicom, "home_pacs", str, "", "dicom").strip()
    if home_pacs and home_pacs not in {d.ae_title for d in destinations}:
        raise ConfigError(f"dicom.home_pacs = {home_pacs!r} names no AE title of "
                          "[dicom.destinations]; add it there as AE = \"HOST:PORT\"")
    dicom_cfg = DicomConfig(
        home_pacs=home_pacs,
        ae_title=_ae(_get(dicom, "ae_title", str, "MEDFED", "dicom"), "dicom.ae_title"),
        host=_host(_get(dicom, "host", str, "127.0.0.1", "dicom"), "dicom.host"),
        port=_port(dicom, "port", 11112, "dicom"),
        allow=allow,
        destinations=tuple(destinations),
        users=tuple((ae.strip(), user) for ae, user in users_table.items()),
        federation_ae_title=_ae(_get(dicom, "federation_ae_title", str, "FEDERATION", "dicom"),
                                "dicom.federation_ae_title"),
        max_pdu=_get(dicom, "max_pdu", int, 0, "dicom"),
        network_timeout_s=_get(dicom, "network_timeout_s", float, 30.0, "dicom"),
        acse_timeout_s=_get(dicom, "acse_timeout_s", float, 30.0, "dicom"),
        dimse_timeout_s=_get(dicom, "dimse_timeout_s", float, 30.0, "dicom"),
        max_associations=_get(dicom, "max_associations", int, 64, "dicom"),
        receivers=_receivers(_get(dicom, "receivers", int, -1, "dicom")),
        **_dicom_tls(dicom, base_dir),
    )

    upstream_cfg = None
    if "upstream" in raw:
        up = _section(raw, "upstream")
        retrieve = _get(up, "retrieve", str, "get", "upstream")
        if retrieve not in ("get", "move"):
            raise ConfigError("upstream.retrieve must be \"get\" or \"move\"")
        upstream_cfg = UpstreamConfig(
            ae_title=_ae(_get(up, "ae_title", str, "", "upstream"), "upstream.ae_title"),
            host=_host(_get(up, "host", str, "127.0.0.1", "upstream"), "upstream.host"),
            port=_port(up, "port", 4242, "upstream"),
            calling_ae_title=_get(up, "calling_ae_title", str, "", "upstream"),
            sync_interval_s=_get(up, "sync_interval_s", float, 300.0, "upstream"),
            sync_lookback_days=_get(up, "sync_lookback_days", int, 1, "upstream"),
            cache_max_mb=_get(up, "cache_max_mb", float, 2048.0, "upstream"),
            retrieve=retrieve,
            timeout_s=_get(up, "timeout_s", float, 30.0, "upstream"),
        )

    durability = _get(ingest, "durability", str, "full", "ingest")
    if durability not in ("full", "normal"):
        raise ConfigError("ingest.durability must be \"full\" or \"normal\"")

    store = _section(raw, "store")
    store_url = _get(store, "url", str, "", "store") or None
    if store_url is not None and not store_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("store.url must be a postgresql://... URL (leave it out for the "
                          "embedded SQLite store)")
    store_readers = _get(store, "readers", int, 4, "store")
    store_cache_mb = _get(store, "cache_mb", int, 32, "store")
    if not 1 <= store_readers <= 64 or not 1 <= store_cache_mb <= 65536:
        raise ConfigError("store.readers must be 1..64 and store.cache_mb 1..65536")

    fed = _section(raw, "federation")
    defaults = FederationSettings()
    federation = FederationSettings(**{
        key: _get(fed, key, type(getattr(defaults, key)), getattr(defaults, key), "federation")
        for key in FederationSettings.__dataclass_fields__})
    unknown = set(fed) - set(FederationSettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"[federation] has unknown key(s): {', '.join(sorted(unknown))}")
    if not 1 <= federation.shares_k <= federation.shares_n <= 255:
        raise ConfigError("federation.shares_k must be between 1 and shares_n (at most 255)")
    if federation.warm_peers < 0 or federation.peer_idle_timeout_s <= 0:
        raise ConfigError("federation.warm_peers must be >= 0 (0: no warm connections) and "
                          "federation.peer_idle_timeout_s > 0 seconds")
    http_cert, http_key = _http_tls(http, base_dir)
    http_host = _host(_get(http, "host", str, "127.0.0.1", "http"), "http.host")
    if http_cert is None and not is_loopback(http_host):
        raise ConfigError(f"http.host = {http_host!r} without http.cert and http.key: the web "
                          "port serves plain HTTP only on loopback; give the hospital's TLS "
                          "certificate and key, or bind to 127.0.0.1")
    policy = _section(raw, "policy") if "policy" in raw else default_policy()
    try:
        from ..policy import policy_from_dict
        policy_from_dict(policy)
    except ValueError as exc:
        raise ConfigError(f"[policy]: {exc}") from exc

    return NodeConfig(
        name=name,
        data_dir=data_dir,
        dicom=dicom_cfg,
        http_host=http_host,
        http_port=_port(http, "port", 8080, "http"),
        http_cert=http_cert,
        http_key=http_key,
        http_session_idle_s=_get(http, "session_idle_s", float, 900.0, "http"),
        http_persist_sessions=_get(http, "persist_sessions", bool, True, "http"),
        peer_host=_host(_get(peer, "host", str, "127.0.0.1", "peer"), "peer.host"),
        peer_port=_port(peer, "port", 8443, "peer"),
        dht_host=_host(_get(dht, "host", str, "", "dht"), "dht.host") if dht.get("host") else "",
        dht_port=_port(dht, "port", 8468, "dht"),
        advertise_host=(_host(_get(node, "advertise", str, "", "node"), "node.advertise")
                        if node.get("advertise") else ""),
        upstream=upstream_cfg,
        series_idle_s=_get(ingest, "series_idle_s", float, 30.0, "ingest"),
        durability=durability,
        federation=federation,
        policy=policy,
        source=source,
        store_url=store_url,
        store_readers=store_readers,
        store_cache_mb=store_cache_mb,
    )


def load_config(path: Path) -> NodeConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_config(raw, path.parent.resolve(), source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
