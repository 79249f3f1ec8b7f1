"""First-flight peer connections: the request travels with the handshake (Noise IK).

A new TLS 1.3 connection costs three round trips before the first answer byte (TCP, TLS,
the request). Python's ``ssl`` has no TLS 1.3 early data, so a process that opens new
connections and leaves (``medfed fetch`` with no node running) paid 2 RTT more than the
link's limit: bench.wan's cold-process rows, 1.13x the limit at 1 Gbit/s / 20 ms.

Here the client sends Noise ``IK`` message 1 — its ephemeral key, its static key sealed to
the server's static key (both the roster's X25519 box keys), and the whole HTTP request
as payload — right after the TCP handshake; the server answers message 2 and the HTTP
response in the same flight: two round trips in all. The request inside is the same
signed peer request as over TLS (``node.net.reqsign``): its nonce and validity window
refuse a replayed message 1, and only the member holding the client's static key can
read the answer. A server accepts both kinds of connection on the peer port; the first
byte tells them apart (TLS records start with 0x16).

Modules: ``frames`` (wire framing, pure), ``noise_ik`` (handshake set-up, pure),
``channel`` (the sealed transport both ends hand to aiohttp), ``server`` and ``client``.
"""
