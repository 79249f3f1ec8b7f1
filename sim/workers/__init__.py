"""``medfed sim --workers W``: one federation split across W processes in virtual time.

Node ``i`` runs in worker ``i % W`` (``partition``), on that process's own virtual
clock. The parent (``coordinator``) builds the federation once (CA, admissions: every
node's folder), starts the workers (``process``), and moves them forward together,
conservatively: with lookahead L = the network model's minimum one-way latency
(``lookahead``), every worker runs its events up to the end of a window [t, t + L)
and then stops; the datagrams its nodes sent in the window to other workers' hosts
(each already stamped with its arrival time, >= send time + L) are exchanged at that
barrier as explicit frames (``framing``: length-prefixed JSON, payloads in base64, no
pickle), so no worker ever receives a message in its past. ``t`` is the earliest
pending event anywhere, so idle stretches (timers hours apart) cost one window.

What a scenario does is a global list of steps (``plan``): join node 7, publish on
every node, look up key k from node h, take these nodes down. Each step runs in the
workers that own the nodes it names, starting at the barrier where the previous step
was seen complete, so the order of actions is the same for any W.
Only the lookup scenario is planned so far. DHT datagrams and peer-API streams
(``streams``: connections whose ends run in two workers, opened and carried by wires
exchanged at the barriers) cross between workers.
"""
