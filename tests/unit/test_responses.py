"""The Content-Type headers an answer may come with and land (pure: no services)."""

from __future__ import annotations

import pytest
from aiohttp.helpers import parse_content_type

from worker.engine import responses


@pytest.mark.parametrize("raw", sorted(responses._USUAL_JSON_TYPES))
def test_each_usual_json_header_is_one_the_full_check_accepts(raw: str) -> None:
    """A header taken as JSON without parsing parses, as aiohttp reads it, to an accepted
    type: the short path never accepts what the full check would refuse."""
    ctype, _ = parse_content_type(raw)
    assert ctype.lower() in responses._JSON_TYPES
