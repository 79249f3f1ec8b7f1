"""Series bundles: the pure format pieces and the encrypted, compressed stream."""
