"""The S3 request recording is read whole even when concurrent requests shared a line."""

import json

import pytest

from tests.integration import s3record


def test_entries_sharing_a_line_are_all_read():
    a = {"method": "PUT", "url": "/b/k1", "headers": {}, "body": "x" * 5000}
    b = {"method": "GET", "url": "/b/k2", "headers": {}}
    c = {"method": "HEAD", "url": "/b", "headers": {}}
    # moto's two writes per entry, interleaved by two threads: a, b, "\n", "\n", then c.
    text = json.dumps(a) + json.dumps(b) + "\n\n" + json.dumps(c) + "\n"
    assert s3record.entries(text) == [a, b, c]


def test_a_torn_entry_fails_rather_than_being_skipped():
    text = json.dumps({"method": "GET"}) + "\n" + '{"method": "PU' + "\n"
    with pytest.raises(json.JSONDecodeError):
        s3record.entries(text)
