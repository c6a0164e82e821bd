"""Battery alerting backend: the domain core shared by the Function App, the CLI and the scoring script.

One module per domain noun. Pure functions over pandas/numpy in the middle; Azure clients and HTTP
at the edges, passed in by the caller so tests can hand in real local services (Azurite, azmlinfsrv).
"""
