"""Observability: the counters every call updates (:mod:`~resmesh.observe.metrics`), and
what exports them: Prometheus text on the admin port, Graphite pushes, the access log."""
