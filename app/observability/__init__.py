"""Metrics, request ids and log formatting: what an operator sees of a running Parley."""
