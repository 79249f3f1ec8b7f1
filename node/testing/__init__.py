"""Helpers that run real nodes and federations for tests, the demo and the simulator."""
