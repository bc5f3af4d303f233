"""Landing.delete's per-key answers. Refusals (AccessDenied) are tested against the moto server
(tests/integration/test_landing_lost.py); moto never answers a key with a transient error
(SlowDown, InternalError), so those come from a stand-in client that answers DeleteObjects the
way S3 documents it: 200, with the keys it could not delete in `Errors`."""

from __future__ import annotations

import pytest

from workers.landing import store
from workers.landing.store import DeleteFailed, Landing


class FlakyS3:
    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers  # key -> per-call error codes ("" = deleted)
        self.calls: list[list[str]] = []

    def delete_objects(self, Bucket, Delete):  # noqa: N803 (boto3's argument names)
        keys = [o["Key"] for o in Delete["Objects"]]
        self.calls.append(keys)
        errors = []
        for k in keys:
            codes = self.answers.get(k, [""])
            code = codes.pop(0) if len(codes) > 1 else codes[0]
            if code:
                errors.append({"Key": k, "Code": code, "Message": f"{code} for {k}"})
        return {"Errors": errors} if errors else {}


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(store.time, "sleep", lambda s: None)


def test_transient_per_key_errors_are_retried_for_those_keys_only():
    s3 = FlakyS3({"stream/a": ["SlowDown", "InternalError", ""], "stream/b": [""]})
    Landing(s3, "bucket").delete(["stream/a", "stream/b"])
    assert s3.calls == [["stream/a", "stream/b"], ["stream/a"], ["stream/a"]]


def test_a_refusal_is_not_retried_and_a_transient_error_that_persists_says_so():
    s3 = FlakyS3({"stream/denied": ["AccessDenied"], "stream/slow": ["SlowDown"]})
    with pytest.raises(DeleteFailed) as e:
        Landing(s3, "bucket").delete(["stream/denied", "stream/slow"])
    assert s3.calls[0] == ["stream/denied", "stream/slow"]
    assert all(c == ["stream/slow"] for c in s3.calls[1:]) and len(s3.calls) == \
        store.DELETE_ATTEMPTS
    assert sorted(x["Key"] for x in e.value.errors) == ["stream/denied", "stream/slow"]
    assert "s3:DeleteObject" in str(e.value)


def test_only_transient_failures_do_not_blame_the_role():
    s3 = FlakyS3({"stream/slow": ["InternalError"]})
    with pytest.raises(DeleteFailed) as e:
        Landing(s3, "bucket").delete(["stream/slow"])
    assert "s3:DeleteObject" not in str(e.value) and "after retries" in str(e.value)
