"""The MySQL runtime (runtime.py), its session driver (session.py), its backend connections
and per-node pools (backend.py), and how a query's verbs are read for governance (sql.py)."""
