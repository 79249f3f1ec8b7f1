"""What can go wrong serving DICOMweb, each with the HTTP status it answers with."""

from __future__ import annotations


class DicomwebError(Exception):
    status = 500


class NotFound(DicomwebError, LookupError):
    """Nothing stored or reachable under the requested UIDs."""
    status = 404


class Refused(DicomwebError, PermissionError):
    """The owning site's policy does not release this to this user."""
    status = 403


class Unavailable(DicomwebError):
    """The site holding the data could not deliver it now (try again, or later)."""
    status = 502


class NotAcceptable(DicomwebError):
    """The client accepts no media type or transfer syntax this node can give."""
    status = 406


class Unsupported(DicomwebError):
    """The request is valid DICOMweb but asks for something this node does not do."""
    status = 400
