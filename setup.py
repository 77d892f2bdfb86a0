"""Builds the compiled RESP request framer (``resmesh/protocols/resp/_framer.c``).

Everything else is in ``pyproject.toml``. The extension is optional: where no C compiler or
Python headers are installed (Debian: ``build-essential python3-dev``), the install still
succeeds and the gateway parses requests with the pure-Python parser, at about twice the CPU.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "resmesh.protocols.resp._framer",
            ["resmesh/protocols/resp/_framer.c"],
            optional=True,
        )
    ]
)
