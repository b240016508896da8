"""Reading enqueue's request files and request flags, without services."""

from __future__ import annotations

import pytest

from worker.cli.util import read_requests, request_fields
from worker.errors import UsageError


def test_json_lines_and_arrays_read_alike() -> None:
    """One object a line (blank lines skipped) or one array over many lines: the same requests."""
    lines = ['{"url": "http://a/1"}\n', "\n", '{"url": "http://a/2", "method": "POST"}\n']
    array = [
        "[\n",
        '  {"url": "http://a/1"},\n',
        '  {"url": "http://a/2", "method": "POST"}\n',
        "]\n",
    ]
    assert list(read_requests(lines, "f")) == list(read_requests(array, "f"))
    assert list(read_requests(["\n", "  \n"], "f")) == []


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        (["[1, 2\n"], "f is not a JSON array of requests"),
        (["[1, 2]\n"], "f: item 0 is not a JSON object"),
        (['{"url": "u"}\n', "nope\n"], "f: line 2 is not JSON"),
        (['"http://a/"\n'], "f: line 1 is not a JSON object"),
    ],
)
def test_bad_request_files_name_the_place(lines: list[str], says: str) -> None:
    """A request file that is not requests is a usage error saying where."""
    with pytest.raises(UsageError, match=says):
        list(read_requests(lines, "f"))


def test_flags_become_job_fields() -> None:
    """--method is upper-cased, --header split at the first colon; unset flags add nothing."""
    assert request_fields(None, None, []) == {}
    assert request_fields("post", '{"q": 1}', ["X-A: b:c", "Accept:x"]) == {
        "method": "POST",
        "json": {"q": 1},
        "headers": {"X-A": "b:c", "Accept": "x"},
    }
