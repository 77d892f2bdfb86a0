"""The Redis session's state machine, sans-IO: classification, modes and transitions, the
replies the gateway makes itself, EXEC's array, and the pub/sub relay's translation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from resmesh.protocols.resp import replies as R
from resmesh.protocols.resp.requests import Command
from resmesh.protocols.resp.session import (
    TRANSITIONS,
    Action,
    Kind,
    Mode,
    RespSession,
    classify,
    command_info,
)


def _cmd(*args: str | bytes) -> Command:
    return Command([a.encode() if isinstance(a, str) else a for a in args])


def _step(session: RespSession, *args: str | bytes) -> Action:
    command = _cmd(*args)
    return session.step(command, classify(command.args))


# -- classification -----------------------------------------------------------------------------


def test_commands_are_classified_once_by_name_in_any_case() -> None:
    get = command_info(b"get")
    assert get is command_info(b"GET") is command_info(b"Get")
    assert (get.kind, get.plain, get.read, get.switchable) == (Kind.FORWARD, True, True, True)
    assert (command_info(b"SET").plain, command_info(b"SET").read) == (True, False)
    assert command_info(b"BLPOP").kind is Kind.BLOCKING
    assert command_info(b"MULTI").kind is Kind.MULTI
    assert command_info(b"DISCARD").kind is Kind.EXEC
    assert command_info(b"PSUBSCRIBE").kind is Kind.SUBSCRIBE
    assert command_info(b"HELLO").kind is Kind.LOCAL
    assert not command_info(b"INFO").switchable and command_info(b"SCAN").switchable
    unknown = command_info(b"MYMODULE.DO")
    assert (unknown.spec, unknown.plain, unknown.kind) == (None, False, Kind.FORWARD)


def test_a_subcommand_is_never_plain_whatever_was_seen_before() -> None:
    """CONFIG GET is harmless, CONFIG SET refused: the fast path only sees ``CONFIG``, so no
    classification of a container may ever say "forward it as it is"."""
    get = classify([b"config", b"get", b"maxmemory"])
    assert get.spec is not None and get.spec.name == b"CONFIG|GET"
    assert not get.plain and not get.checked
    assert not command_info(b"config").plain
    refused = classify([b"CONFIG", b"SET", b"maxmemory", b"1"])
    assert refused.checked
    session = RespSession(1, "c:1", "g:1", {})
    assert _step(session, "CONFIG", "SET", "maxmemory", "1") is Action.REPLY
    assert session.reply.startswith(b"-ERR command 'CONFIG SET' is not supported")
    assert _step(session, "config", "get", "maxmemory") is Action.FORWARD


def test_every_mode_but_subscribed_has_an_action_for_every_kind() -> None:
    for mode in Mode:
        for kind in Kind:
            assert ((mode, kind) in TRANSITIONS) == (mode is not Mode.SUBSCRIBED), (mode, kind)


# -- modes and transitions ----------------------------------------------------------------------


def test_a_client_must_authenticate_first_when_users_are_configured() -> None:
    session = RespSession(1, "c:1", "g:1", {"app": "secret"})
    assert not session.forwards_plain
    assert _step(session, "GET", "k") is Action.REPLY and session.reply == R.NOAUTH
    assert _step(session, "AUTH", "app", "wrong") is Action.LOCAL
    assert session.auth(_cmd("AUTH", "app", "wrong")) == R.WRONGPASS
    assert session.auth(_cmd("AUTH", "app", "secret")) == R.OK
    assert session.user == "app" and session.forwards_plain
    assert _step(session, "GET", "k") is Action.FORWARD


def test_exec_discard_and_unwatch_outside_a_transaction_are_answered_here() -> None:
    session = RespSession(1, "c:1", "g:1", {})
    assert _step(session, "EXEC") is Action.REPLY
    assert session.reply == b"-ERR EXEC without MULTI\r\n"
    assert _step(session, "discard") is Action.REPLY
    assert session.reply == b"-ERR DISCARD without MULTI\r\n"
    assert _step(session, "UNWATCH") is Action.REPLY and session.reply == R.OK


def test_a_transaction_from_multi_to_exec() -> None:
    session = RespSession(1, "c:1", "g:1", {})
    assert _step(session, "MULTI") is Action.BEGIN_MULTI
    session.began_multi()
    assert not session.forwards_plain
    assert _step(session, "SET", "k", "v") is Action.QUEUE
    session.queued()
    assert _step(session, "SELECT", "3") is Action.QUEUE
    session.queued()
    assert _step(session, "BLPOP", "q", "0") is Action.QUEUE  # nothing blocks in MULTI
    session.queued()
    for refused in (("SUBSCRIBE", "ch"), ("AUTH", "x"), ("HELLO", "3"), ("MONITOR",)):
        assert _step(session, *refused) is Action.REFUSE_QUEUED, refused
        assert session.reply.startswith(b"-ERR"), session.reply
    assert _step(session, "EXEC") is Action.END_MULTI
    selects, local = session.ending_multi()
    assert (selects, local, session.mode) == ([(1, 3)], {}, Mode.NORMAL)
    reply = session.exec_reply(b"*3\r\n+OK\r\n+OK\r\n*-1\r\n", selects, local)
    assert reply == b"*3\r\n+OK\r\n+OK\r\n*-1\r\n" and session.db == 3


def test_exec_s_array_holds_the_replies_the_gateway_made_in_their_places() -> None:
    session = RespSession(1, "c:1", "g:1", {})
    session.began_multi()
    session.queued(b"$-1\r\n")  # 0: switched, answered here
    session.queued()  # 1: sent
    session.queued(b":0\r\n")  # 2: switched
    session.queued()  # 3: sent
    _step(session, "SELECT", "5")  # 4: sent, a SELECT
    session.queued()
    selects, local = session.ending_multi()
    node = b"*3\r\n+PONG\r\n$1\r\nx\r\n+OK\r\n"
    spliced = session.exec_reply(node, selects, local)
    assert spliced == b"*5\r\n$-1\r\n+PONG\r\n:0\r\n$1\r\nx\r\n+OK\r\n"
    assert session.db == 5
    # A failed EXEC (a WATCH that fired: nil; an abort: an error) is left as it came.
    assert session.exec_reply(b"*-1\r\n", selects, local) == b"*-1\r\n"


def test_a_select_the_node_refused_inside_exec_does_not_move_the_session() -> None:
    session = RespSession(1, "c:1", "g:1", {})
    session.began_multi()
    _step(session, "SELECT", "99")
    session.queued()
    selects, local = session.ending_multi()
    session.exec_reply(b"*1\r\n-ERR DB index is out of range\r\n", selects, local)
    assert session.db == 0


def test_a_refused_multi_runs_nothing_until_exec_or_discard() -> None:
    session = RespSession(1, "c:1", "g:1", {})
    _step(session, "MULTI")
    session.refused_multi("no dedicated backend connection")
    assert _step(session, "SET", "k", "v") is Action.REPLY
    assert b"its MULTI was refused (no dedicated backend connection)" in session.reply
    assert _step(session, "MULTI") is Action.REPLY
    assert session.reply == b"-ERR MULTI calls can not be nested\r\n"
    assert _step(session, "QUIT") is Action.LOCAL  # obeyed in every mode
    assert _step(session, "EXEC") is Action.REPLY and session.reply == R.EXECABORT
    assert session.mode is Mode.NORMAL
    _step(session, "MULTI")
    session.refused_multi("limit")
    assert _step(session, "DISCARD") is Action.REPLY and session.reply == R.OK
    assert session.mode is Mode.NORMAL


def test_watching_sends_to_the_pinned_connection_and_multi_queues_there() -> None:
    session = RespSession(1, "c:1", "g:1", {})
    assert _step(session, "WATCH", "k") is Action.BEGIN_WATCH
    session.began_watch()
    assert session.forwards_plain  # on the pinned connection (the driver knows)
    assert _step(session, "WATCH", "j") is Action.FORWARD
    assert _step(session, "UNWATCH") is Action.UNWATCH
    session.unwatched()
    assert session.mode is Mode.NORMAL
    _step(session, "WATCH", "k")
    session.began_watch()
    assert _step(session, "MULTI") is Action.QUEUE  # the driver starts the transaction


def test_a_sharded_cluster_refuses_transactions_with_the_reason() -> None:
    session = RespSession(1, "c:1", "g:1", {}, sharded=True)
    assert _step(session, "MULTI") is Action.REPLY
    assert session.reply.startswith(b"-ERR 'MULTI' is not supported in sharded mode")
    assert session.mode is Mode.MULTI_REFUSED
    assert _step(session, "EXEC") is Action.REPLY and session.reply == R.EXECABORT
    assert _step(session, "WATCH", "k") is Action.REPLY
    assert b"sharded mode" in session.reply


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                ("MULTI",),
                ("EXEC",),
                ("DISCARD",),
                ("WATCH", "k"),
                ("UNWATCH",),
                ("GET", "k"),
                ("SET", "k", "v"),
                ("SELECT", "1"),
                ("RESET",),
                ("PING",),
                ("BLPOP", "q", "0"),
                ("CONFIG", "SET", "a", "b"),
                ("AUTH", "x"),
            ]
        ),
        max_size=40,
    ),
    st.booleans(),
)
def test_any_command_sequence_keeps_the_session_consistent(
    sequence: list[tuple[str, ...]], refuse_multi: bool
) -> None:
    """Driving the machine as the driver does (pinning always succeeds or always fails):
    every step has an action, and the session is in MULTI exactly between a MULTI it began
    and the EXEC/DISCARD/RESET that ends it."""
    session = RespSession(1, "c:1", "g:1", {})
    in_multi = False
    for args in sequence:
        action = _step(session, *args)
        name = args[0]
        if action is Action.BEGIN_MULTI:
            if refuse_multi:
                session.refused_multi("test")
            else:
                session.began_multi()
                in_multi = True
        elif action is Action.BEGIN_WATCH:
            session.began_watch()
        elif action is Action.QUEUE and name == "MULTI" and session.mode is Mode.WATCHING:
            session.began_multi()
            in_multi = True
        elif action is Action.QUEUE:
            session.queued()
        elif action is Action.END_MULTI:
            session.ending_multi()
            in_multi = False
        elif action is Action.UNWATCH:
            session.unwatched()
        elif action is Action.LOCAL and name == "RESET":
            session.reset()
            in_multi = False
        assert (session.mode is Mode.MULTI) == in_multi, (args, session.mode)
        assert session.mode is not Mode.SUBSCRIBED


# -- replies the gateway makes ------------------------------------------------------------------


def _two_sessions() -> tuple[RespSession, RespSession]:
    sessions: list[RespSession] = []
    a = RespSession(7, "c:1", "g:1", {}, peers=lambda: sessions)
    b = RespSession(8, "c:2", "g:1", {}, peers=lambda: sessions)
    sessions += [a, b]
    return a, b


def test_client_list_filters_by_id_and_type() -> None:
    a, b = _two_sessions()
    b.subscribed()
    everyone = a.client(_cmd("CLIENT", "LIST"))
    assert b"id=7 " in everyone and b"id=8 " in everyone
    only_b = a.client(_cmd("CLIENT", "LIST", "ID", "8"))
    assert b"id=8 " in only_b and b"id=7 " not in only_b
    pubsub = a.client(_cmd("client", "list", "type", "pubsub"))
    assert b"id=8 " in pubsub and b"id=7 " not in pubsub
    normal = a.client(_cmd("CLIENT", "LIST", "TYPE", "normal"))
    assert b"id=7 " in normal and b"id=8 " not in normal
    assert a.client(_cmd("CLIENT", "LIST", "TYPE", "replica")) == R.verbatim(b"", 2)
    assert a.client(_cmd("CLIENT", "LIST", "TYPE", "bogus")).startswith(b"-ERR Unknown client")
    assert a.client(_cmd("CLIENT", "LIST", "ID", "x")) == b"-ERR Invalid client ID\r\n"
    assert a.client(_cmd("CLIENT", "LIST", "FOO")) == R.SYNTAX


def test_client_tracking_queries_say_tracking_is_off_and_reply_on_is_accepted() -> None:
    session = RespSession(1, "c:1", "g:1", {})
    assert session.client(_cmd("CLIENT", "REPLY", "ON")) == R.OK
    assert session.client(_cmd("CLIENT", "GETREDIR")) == b":-1\r\n"
    info = session.client(_cmd("CLIENT", "TRACKINGINFO"))
    assert info == (
        b"*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"
    )
    session.switch_protocol(3)
    assert session.client(_cmd("CLIENT", "TRACKINGINFO")).startswith(b"%3\r\n")
    # CLIENT REPLY OFF is refused by the table before it gets here.
    assert _step(session, "CLIENT", "REPLY", "OFF") is Action.REPLY
    assert b"not supported through the resmesh gateway" in session.reply


def test_hello_negotiates_the_protocol_and_can_log_in() -> None:
    session = RespSession(3, "c:1", "g:1", {"app": "pw"})
    reply, switch_to = session.hello(_cmd("HELLO", "3"))
    assert switch_to is None and reply.startswith(b"-NOAUTH")
    reply, switch_to = session.hello(_cmd("HELLO", "3", "AUTH", "app", "pw", "SETNAME", "me"))
    assert switch_to == 3 and reply.startswith(b"%7\r\n")
    assert (session.authenticated, session.name) == (True, b"me")
    assert session.resp == 2  # the driver switches once queued commands have gone out
    assert session.hello(_cmd("HELLO", "4")) == (R.NOPROTO, None)


def test_reset_forgets_the_login_the_database_and_the_protocol() -> None:
    session = RespSession(1, "c:1", "g:1", {"app": "pw"})
    session.authenticate([b"app", b"pw"])
    session.selected(4)
    session.switch_protocol(3)
    assert session.reset() == R.RESET
    assert (session.authenticated, session.db, session.resp, session.user) == (
        False,
        0,
        2,
        None,
    )


# -- the relay ----------------------------------------------------------------------------------


def test_the_relay_lets_the_node_speak_the_gateway_s_refusals_in_order() -> None:
    session = RespSession(1, "c:1", "g:1", {})
    session.subscribed()
    asked = []

    def refuse(command: Command, info: object) -> str | None:
        asked.append(command.args[0])
        return "ERR resmesh: limited" if command.args[0] == b"PUBLISH" else None

    commands = [_cmd("PING"), _cmd("PUBLISH", "c", "m"), _cmd("CONFIG", "SET", "a", "b")]
    payload = session.relay_payload([*commands, _cmd("UNSUBSCRIBE")], refuse)
    assert payload.startswith(b"*1\r\n$4\r\nPING\r\n")
    parts = payload.split(b"*4\r\n$4\r\nEVAL\r\n")
    assert len(parts) == 3  # PUBLISH and CONFIG SET: the node says the gateway's words
    assert b"ERR resmesh: limited" in parts[1]
    assert b"'CONFIG SET' is not supported" in parts[2]
    assert payload.endswith(b"*1\r\n$11\r\nUNSUBSCRIBE\r\n")
    assert asked == [b"PUBLISH", b"UNSUBSCRIBE"]  # local and refused commands are not asked


def test_a_subscriber_in_a_sharded_cluster_runs_pub_sub_commands_only() -> None:
    session = RespSession(1, "c:1", "g:1", {}, sharded=True)
    session.subscribed()
    payload = session.relay_payload([_cmd("GET", "k"), _cmd("PING")], lambda c, i: None)
    assert b"on a connection that subscribed in a sharded cluster" in payload
    assert payload.endswith(b"*1\r\n$4\r\nPING\r\n")
