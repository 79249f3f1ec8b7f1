"""Synthetic patients, studies and series with planted PHI, for tests, demos and the simulator."""
