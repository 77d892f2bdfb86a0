"""``python -m resmesh``: the same command as the ``resmesh`` console script.

Useful where the script is not on ``PATH`` (a fresh venv not yet activated) and in tests, which
run ``sys.executable -m resmesh`` so they exercise exactly the interpreter under test.
"""

from __future__ import annotations

from resmesh.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
