"""The private Orthanc for tests lives in node/testing/orthanc.py (bench uses it too)."""

from node.testing.orthanc import ORTHANC_AE, ORTHANC_BIN, Orthanc, OrthancError, orthanc_config

__all__ = ["ORTHANC_AE", "ORTHANC_BIN", "Orthanc", "OrthancError", "orthanc_config"]
