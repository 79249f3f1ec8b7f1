"""The commented TOML that `medfed init` writes: the file a PACS team reads and edits."""

from __future__ import annotations

import json

TEMPLATE = """\
# medfed node configuration. Paths are relative to this file.
# Edit, then start the node with:  medfed run --config {config_path}

[node]
# Shown to other sites and in the audit log.
name = {name}
# Where images (objects/), the SQLite metadata, keys and the audit log live.
data_dir = "data"
# The host name or address other hospitals reach this machine at (peer API and DHT).
# It goes into the admission request; to change it later, re-admit (see README).
advertise = {advertise}

[dicom]
# This node's own AE title and the port its DICOM service (SCP) listens on.
ae_title = {ae_title}
host = {dicom_host}
port = {dicom_port}
# Calling AE titles allowed to associate, as "AE@HOST" ("AE@*" = from any host).
# Unknown callers are rejected at association time and logged.
allow = {allow}
# Called AE title a viewer uses to query the whole federation (C-FIND).
federation_ae_title = "FEDERATION"
# The hospital PACS the web app's "fetch to home PACS" moves series to (C-MOVE
# sub-operations from this node's AE title): an AE title of [dicom.destinations].
# home_pacs = "PACS"
# Seconds before an idle or stuck association is dropped.
network_timeout_s = 30
acse_timeout_s = 30
dimse_timeout_s = 30
# Optional DICOM TLS port (PS3.15 B.1, BCP 195: TLS 1.2+, AEAD ciphers): PEM certificate
# and key of this node; with tls_ca, callers must present a certificate signed by it.
# tls_port = 2762
# tls_cert = "dicom-tls.crt"
# tls_key = "dicom-tls.key"
# tls_ca = "hospital-ca.crt"

# C-MOVE destinations this node may send to: AE title = "HOST:PORT".
[dicom.destinations]
{destinations}
# Viewers that query/retrieve through the federation AE title act for a local user:
# calling AE title = "user name" (from 'medfed user add'); others are refused there.
[dicom.users]
# VIEWER = "alice"

[http]
# Web app, OHIF viewer and DICOMweb for clinicians (never the peer API).
# Plain HTTP only on loopback: any other host needs the hospital's certificate + key (PEM).
host = "127.0.0.1"
port = {http_port}
# cert = "tls/web.crt"
# key = "tls/web.key"
# A web session ends after this many seconds without a request.
session_idle_s = 900
# Keep sessions across a restart of the node (a private SQLite file holding hashed
# session ids); false: a restart logs everybody out.
persist_sessions = true

[peer]
# Peer API for other federation members (mutual TLS): open this TCP port to them.
# host = the interface to listen on ("0.0.0.0" = all).
host = {host}
port = {peer_port}

[dht]
# DHT index (UDP, every datagram signed): open this UDP port to the other members.
host = {host}
port = {dht_port}

[ingest]
# A series counts as complete after this many seconds without a new instance.
series_idle_s = 30
# "full": every acknowledged C-STORE survives a power cut (SQLite synchronous=FULL).
# "normal": survives a process crash, may lose the last commits on power loss.
durability = "full"

[federation]
# Federated queries wait at most this long for other sites, then answer with what came.
query_deadline_s = 5.0
hedge_after_s = 1.0
max_parallel = 32
# Series leaving this site are encrypted; the key is split k-of-n among other members.
shares_k = 3
shares_n = 5
replicas = 2
index_republish_s = 600
repair_interval_s = 300
# Peer connections (mutual TLS) to this many members are kept open and re-opened when
# they drop (the most recently asked, then a fixed sample of the roster); any peer
# connection unused for peer_idle_timeout_s seconds is closed. Peer sockets use TCP
# keep-alive (probes after 120 s idle), so firewalls and NATs keep idle connections.
warm_peers = 32
peer_idle_timeout_s = 1800

# Site policy: what this site answers to whom (first matching rule wins; default deny).
# level: deny | count (small counts shown as "<N") | deidentified | identified (PHI;
# only for named sites and roles, e.g. treating clinicians with purpose "treatment").
[policy]
small_count_threshold = 5
# Similarity search: methods allowed to run on this site's data ("id" or "id@version")
# and what an answer may carry besides scores: scores | diagnosis | report (de-identified).
similarity_methods = ["hist", "embed"]
similarity_release = "diagnosis"

[[policy.rule]]
name = "members: de-identified"
site = "*"
role = ["clinician", "researcher"]
level = "deidentified"

[[policy.rule]]
name = "members: counts"
site = "*"
level = "count"

# Front an existing PACS (it is never modified): uncomment and fill in.
# [upstream]
# ae_title = "ORTHANC"
# host = "127.0.0.1"
# port = 4242
# calling_ae_title = ""      # defaults to this node's AE title; the PACS must know it
# sync_interval_s = 300      # metadata sync by C-FIND
# sync_lookback_days = 1     # re-check studies this many days before the last sync
# cache_max_mb = 2048        # bound of the scratch cache for retrieved instances
# retrieve = "get"           # "get" (C-GET) or "move" (C-MOVE to this node)
"""


def toml_str(value: str) -> str:
    return json.dumps(value)


def render_config(*, config_path: str, name: str, ae_title: str, dicom_host: str,
                  dicom_port: int, http_port: int, peer_port: int, dht_port: int,
                  allow: list[str], destinations: dict[str, str], host: str = "127.0.0.1",
                  advertise: str = "") -> str:
    dest_lines = "".join(f"{k} = {toml_str(v)}\n" for k, v in destinations.items())
    return TEMPLATE.format(
        config_path=config_path, name=toml_str(name), ae_title=toml_str(ae_title),
        dicom_host=toml_str(dicom_host), dicom_port=dicom_port, http_port=http_port,
        peer_port=peer_port, dht_port=dht_port, host=toml_str(host),
        advertise=toml_str(advertise),
        allow="[" + ", ".join(toml_str(a) for a in allow) + "]",
        destinations=dest_lines or "# VIEWER = \"127.0.0.1:11113\"\n",
    )
