"""Test support: real servers and small fakes that tests start themselves.

- ``prometheus``: a real Prometheus on a random loopback port (project rule:
  tests about Prometheus talk to a real one).
- ``net``: loopback ports.
- ``fakehttp``: a scripted HTTP server, only for behaviours a real server
  cannot be made to show (slow answers, 503s, malformed bodies).
"""
