"""Test support: real servers and the gateway as subprocesses."""
