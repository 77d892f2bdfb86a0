"""A Motan2 echo service to try the client, the agent and motan-go tools against.

Run ``python examples/motan2_echo.py`` (``--host``, ``--port``; 127.0.0.1:8100 by default). It
serves ``resmesh.demo.EchoService`` (group ``resmesh-demo``) in the Simple serialization:

- ``echo(any)`` returns its argument, with the same Simple type tag (an ``Int32`` comes back an
  ``Int32``), so it doubles as a serialization round-trip check;
- ``hello(string)`` returns ``"hello " + s``.

Call it from Python::

    async with open_client("127.0.0.1", 8100) as client:
        await client.call(SERVICE, "hello", "motan", group=GROUP)  # 'hello motan'

The group is for agents, which route on group and path; the server itself, like a motan-go
server, finds the service by its path alone. Ctrl-C or SIGTERM stops it cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import trio

from resmesh.net.listen import bind_tcp
from resmesh.net.motan2.service import Motan2Service

SERVICE = "resmesh.demo.EchoService"
GROUP = "resmesh-demo"

log = logging.getLogger("motan2_echo")


async def echo(value: Any) -> Any:
    """The argument, unchanged (its decoded marker type keeps its Simple tag on the way back)."""
    return value


async def hello(name: str) -> str:
    """``"hello " + name``; a non-string argument is a business error, as it would be for a
    Java ``hello(String)`` given something else."""
    if not isinstance(name, str):
        raise TypeError(f"hello takes a string, not {type(name).__name__}")
    return "hello " + name


def build_service(**options: Any) -> Motan2Service:
    """The echo service's handlers on a :class:`Motan2Service` (``options``: its settings)."""
    service = Motan2Service(**options)
    service.register(SERVICE, "echo", echo)
    service.register(SERVICE, "hello", hello)
    return service


async def serve(
    listener: socket.socket,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on ``listener`` until SIGINT or SIGTERM; ``nursery.start`` gets the port."""
    service = build_service()
    host = listener.getsockname()[0]
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(service.serve_on, listener)
            log.info("motan2 echo: %s (group %s) listening on %s:%d", SERVICE, GROUP, host, bound)
            task_status.started(bound)
            async for signum in signals:
                log.info("motan2 echo: %s, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8100, help="port to listen on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        listener = bind_tcp(args.host, args.port)
    except OSError as exc:
        log.error("motan2 echo: cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    trio.run(serve, listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
