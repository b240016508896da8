"""The dashboard's session store: random ids, expiry, a cap, logout; constant-time token checks."""

from __future__ import annotations

from worker.ops.answers import same_secret
from worker.ops.sessions import Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_until_its_ttl_then_is_gone() -> None:
    """A session is found by its id until its time is up, then never again."""
    clock = Clock()
    store = Sessions(ttl_s=60, clock=clock)
    session_id, session = store.open()
    assert store.get(session_id) == session
    clock.now += 59
    assert store.get(session_id) == session
    clock.now += 1
    assert store.get(session_id) is None
    assert len(store) == 0


def test_ids_and_csrf_tokens_are_random_and_distinct() -> None:
    """Each session has an unguessable id and a CSRF token of its own, neither equal."""
    store = Sessions()
    opened = [store.open() for _ in range(50)]
    ids = {i for i, _ in opened}
    tokens = {s.csrf for _, s in opened}
    assert len(ids) == len(tokens) == 50
    assert not ids & tokens
    assert all(len(i) >= 40 for i in ids)


def test_the_oldest_session_goes_first_past_the_cap_and_expired_ones_are_pruned() -> None:
    """At most ``cap`` sessions live; opening one more drops the oldest; opening one also
    forgets the expired ones."""
    clock = Clock()
    store = Sessions(ttl_s=100, cap=2, clock=clock)
    first, _ = store.open()
    clock.now += 50
    second, _ = store.open()
    third, _ = store.open()
    assert store.get(first) is None
    assert store.get(second) is not None
    assert store.get(third) is not None
    clock.now += 100  # second and third have expired
    fourth, _ = store.open()
    assert len(store) == 1
    assert store.get(fourth) is not None


def test_close_ends_a_session_and_unknown_ids_are_none() -> None:
    """Logout forgets the id; an unknown, empty or missing id finds nothing."""
    store = Sessions()
    session_id, _ = store.open()
    store.close(session_id)
    store.close("never-issued")
    store.close(None)
    assert store.get(session_id) is None
    assert store.get("") is None
    assert store.get(None) is None


def test_same_secret_compares_the_whole_token() -> None:
    """Only the exact token logs in: no prefix, no extension, no other case; undecodable
    input is a wrong token, not an error."""
    token = "a-very-long-api-token"
    assert same_secret(token, token)
    assert not same_secret(token[:-1], token)
    assert not same_secret(token + "x", token)
    assert not same_secret(token.upper(), token)
    assert not same_secret("", token)
    assert not same_secret("\udcff", token)
