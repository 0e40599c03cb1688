"""Load benchmark of the gateway against plain Envoy and the simulator (`python -m bench.run`).

Benchmark-only: needs `wrk` on PATH; nothing in the gateway or its tests imports this package.
"""
