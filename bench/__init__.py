"""Benchmarks of the running service against a curl ceiling on a loopback nginx origin (``make bench``)."""
