"""DHT settings for tests on a loaded host.

On a busy 2-core machine a loopback RPC can take far longer than the 1 s default
deadline; a timed-out RPC counts against the contact and two evict it, after which
lookups fail for reasons that have nothing to do with what a test checks.
"""

from node.dht.config import DHTConfig

LOADED = DHTConfig(rpc_timeout=10)
