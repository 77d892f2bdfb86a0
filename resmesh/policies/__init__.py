"""Governance policies: one module each, protocol-blind (never imports ``resmesh.protocols``).

Each policy's core is a small synchronous state object taking an explicit ``now``
(``trio.current_time()``, read once by the caller), so a pipelined batch of commands is governed
without an await per command. Only the HA engine awaits: it races a run's attempts (a backup
request, a retry on another node) with one parked task per run rather than a nursery, since a
task or a cancel scope per run would cost several microseconds a command. Every policy has a
``statistics()`` snapshot for the admin API.

Modules:

* :mod:`~resmesh.policies.window`: rolling counters and latency histograms.
* :mod:`~resmesh.policies.limit`: token-bucket rate limits and concurrency caps.
* :mod:`~resmesh.policies.breaker`: a circuit breaker per node.
* :mod:`~resmesh.policies.outlier`: outlier ejection per group.
* :mod:`~resmesh.policies.balance`: node choice within a group.
* :mod:`~resmesh.policies.route`: group (data center) choice by route weights and health.
* :mod:`~resmesh.policies.retry`: failover's settings and its retry budget.
* :mod:`~resmesh.policies.hedge`: the backup-request delay and budget.
* :mod:`~resmesh.policies.switch`: degrade switches.
* :mod:`~resmesh.policies.chain`: ``ClusterPolicies``, the policies above assembled per cluster
  into the one pipeline, with its synchronous steps per call (switch, limits) and per run
  (node choice, breaker, the outcome's accounting).
* :mod:`~resmesh.policies.engine`: the HA engine (``HAEngine``), which sends every run through
  its protocol's ``Transport`` to a node and fails it over or backs it up.
* :mod:`~resmesh.policies.waiting`: how the engine waits: ``Waiter`` (the parked task of one
  run), ``wait_first``, and ``Alarms`` (one timer task per cluster for hedge delays).
"""
