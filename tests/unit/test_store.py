"""The stored form of a URL, without a database."""

from __future__ import annotations

from worker.engine import store


def test_stored_url_keeps_short_urls_and_shortens_long_ones_distinctly() -> None:
    """Within the limit a URL is stored as is; past it, as a 1024-character prefix and the
    SHA-256 of the whole URL, so two long URLs with the same prefix stay distinct."""
    assert store.stored_url("http://a/x", 64) == "http://a/x"
    a = "http://a/" + "x" * 5000
    b = a[:-1] + "y"
    short_a, short_b = store.stored_url(a, 4096), store.stored_url(b, 4096)
    assert short_a != short_b
    assert short_a.startswith(a[:1024])
    assert len(short_a) == 1024 + len("…#sha256=") + 64
    assert store.stored_url(a, 4096) == short_a  # the same URL, the same form
    assert store.stored_url(a, 5009) == a
