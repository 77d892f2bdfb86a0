"""The connection commands redis-py's own test suite found unanswered or wrong through the
gateway, checked with redis-py against the gateway in front of a real redis-server."""

from __future__ import annotations

import socket
import struct

import redis

from tests.support.servers import Gateway, RedisServer, encode_command, wait_for


def test_client_list_filters_by_type_and_id(gateway: Gateway) -> None:
    first = redis.Redis(port=gateway.port, client_name="first")
    second = redis.Redis(port=gateway.port, client_name="second")
    first_id, second_id = first.client_id(), second.client_id()
    by_id = first.client_list(client_id=[second_id])
    assert [c["name"] for c in by_id] == ["second"]
    assert {c["id"] for c in first.client_list()} >= {str(first_id), str(second_id)}
    subscriber = second.pubsub()
    subscriber.subscribe("client-list:ch")
    assert subscriber.get_message(timeout=5)["type"] == "subscribe"
    pubsub_ids = {c["id"] for c in first.client_list(_type="pubsub")}
    normal_ids = {c["id"] for c in first.client_list(_type="normal")}
    assert str(first_id) in normal_ids and str(first_id) not in pubsub_ids
    assert len(pubsub_ids) == 1  # the subscriber's own connection
    assert first.client_list(_type="replica") == []
    subscriber.close()


def test_tracking_queries_answer_as_redis_server_does_with_tracking_off(
    gateway: Gateway, redis_node: RedisServer
) -> None:
    for protocol in (2, 3):
        client = redis.Redis(port=gateway.port, protocol=protocol)
        direct = redis.Redis(port=redis_node.port, protocol=protocol)
        assert client.client_getredir() == direct.client_getredir() == -1
        assert client.client_trackinginfo() == direct.client_trackinginfo()
        assert client.execute_command("CLIENT", "REPLY", "ON") == b"OK"


def test_a_subscriber_whose_connection_is_reset_is_a_quiet_disconnect(gateway: Gateway) -> None:
    before = gateway.log().count("Traceback")
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.sendall(encode_command("SUBSCRIBE", "reset:ch"))
    assert sock.recv(1000).startswith(b"*3\r\n$9\r\nsubscribe")
    # SO_LINGER 0: close() sends a RST, so the gateway's next recv fails with ECONNRESET.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    probe = redis.Redis(port=gateway.port)
    wait_for(lambda: probe.pubsub_numsub("reset:ch")[0][1] == 0, 5, "the subscription to end")
    assert probe.ping()
    assert gateway.log().count("Traceback") == before, gateway.log()
