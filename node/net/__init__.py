"""Membership and the peer API: who is in the federation and how members talk.

pki (CA, node certificates) · admission (join request, member bundle) · federation
(operator folder) · membership (node side: request, install, load) · roster / rosterbook /
roster_sync (signed member list) · fedsecrets (sealed shared keys) · tls / tls_site (mTLS)
· reqsign / nonces / guard (signed requests, replay) · server / client (peer API) ·
assertion (signed user statements) · testbed (a real federation on one machine).
"""
