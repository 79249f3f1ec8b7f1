"""Compute-to-data similarity search: images stay at their sites, only vectors and scores travel.

Modules, one idea each: ``method`` (the protocol a similarity method implements),
``hist`` and ``embed`` (the two shipped methods), ``registry`` (built-ins plus the
``medfed.similarity_methods`` entry points), ``features`` (feature vectors cached in a
table of the metadata store, computed when a series is complete), ``messages`` (the
signed computation request and the site's answer), ``sitepolicy`` (the method allowlist
and what a site releases), ``scan`` (answering a request at a site), ``rank`` (merging
the sites' answers), ``provenance`` (signed records, PROV-JSON), ``records`` (the home
node's runs, provenance and diagnoses) and ``service`` (the NodeService).
"""
