"""Governance policies (DESIGN §4): one module each, protocol-blind (never imports ``protocols``).

Each policy's core is a small synchronous state object taking an explicit ``now``
(``trio.current_time()``, read once by the caller), so a pipelined batch of commands is governed
without an await per command; only :mod:`~resmesh.policies.hedge` and
:mod:`~resmesh.policies.failover` have async adapters, because racing or retrying attempts needs
a nursery. Every policy has a ``statistics()`` returning a frozen snapshot for the admin API.

Modules: :mod:`~resmesh.policies.window` (rolling counters, latency histograms),
:mod:`~resmesh.policies.limit`, :mod:`~resmesh.policies.breaker`,
:mod:`~resmesh.policies.outlier`, :mod:`~resmesh.policies.balance`,
:mod:`~resmesh.policies.route`, :mod:`~resmesh.policies.retry`, :mod:`~resmesh.policies.hedge`,
:mod:`~resmesh.policies.failover`, :mod:`~resmesh.policies.switch`; and
:mod:`~resmesh.policies.chain`, which assembles them per cluster into the one pipeline
(``ClusterPolicies``: the steps for batch paths, ``call()`` for one call at a time).
"""
