"""The federation index: which terms a site holds (terms) and keeping the DHT in step
with the store (publisher)."""

from node.index.publisher import IndexPublisher, IndexPublisherError, SyncReport, local_terms
from node.index.terms import IndexTerms, coarse_count, index_terms, is_coarse

__all__ = ["IndexPublisher", "IndexPublisherError", "IndexTerms", "SyncReport", "coarse_count",
           "index_terms", "is_coarse", "local_terms"]
