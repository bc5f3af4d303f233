"""What S3 requests a process really makes, from the local S3 server's own recording (moto's
recorder), as IAM actions — to tie infra/components/grants.py to the code.

Each workload runs with its own access key id (`sim-<identity>`, cloudsim.access_key), so every
request names who made it (the SigV4 Credential); the local primary's WAL archiving (pgBackRest,
the environment's own key) is the `db` identity. A request is mapped to the IAM action AWS
authorises it as (https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-with-s3-actions.html)
and to the key (or listing prefix) it touches; an unknown kind of request maps to an action no
row grants, so it fails the check rather than passing unseen.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from infra.components import grants

CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
DELETE_KEY = re.compile(r"<Key>(.*?)</Key>", re.S)


@dataclass(frozen=True)
class S3Call:
    identity: str  # who (from the access key id); "" when unknown
    bucket: str
    action: str  # the IAM action
    key: str  # the object key, or the listing's prefix
    what: str  # METHOD path?query, for messages

    def __str__(self) -> str:
        return f"{self.identity or '?'}: {self.action} {self.bucket}/{self.key} ({self.what})"


class Recording:
    """moto's request recorder, on for the `with` block; the recording is reset on entry."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint.rstrip("/")
        self.text = ""

    def _call(self, what: str, method: str = "POST") -> str:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{what}", method=method,
                                     data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read().decode()

    def __enter__(self) -> Recording:
        self._call("reset-recording")
        self._call("start-recording")
        return self

    def __exit__(self, *exc) -> None:
        self._call("stop-recording")
        self.text = self._call("download-recording", "GET")
        self._call("reset-recording")

    def calls(self, identities: dict[str, str]) -> list[S3Call]:
        """Every recorded request as calls; `identities`: access key id -> identity."""
        return [c for entry in entries(self.text) for c in classify(entry, identities)]


def entries(text: str) -> list[dict]:
    """The recording's requests. moto appends each as `json.dumps(entry)` then "\n" in two
    writes, without a lock: under concurrent requests two entries can share a line (a large
    body goes out in its own write, the newlines follow later). So entries are read one JSON
    value after another, whatever whitespace separates them; text that is not JSON still fails."""
    dec = json.JSONDecoder()
    out: list[dict] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        entry, i = dec.raw_decode(text, i)
        out.append(entry)


def _body(entry: dict) -> str:
    body = entry.get("body") or ""
    if entry.get("body_encoded"):
        return base64.b64decode(body).decode("utf-8", "replace")
    return body


def classify(entry: dict, identities: dict[str, str]) -> list[S3Call]:
    headers = {k.lower(): v for k, v in (entry.get("headers") or {}).items()}
    m = CREDENTIAL.search(headers.get("authorization", ""))
    akid = m.group(1) if m else ""
    ua = headers.get("user-agent", "")
    identity = identities.get(akid, "")
    if identity == "db" and "pgbackrest" not in ua.lower():
        identity = ""  # the environment's own key, used by something other than pgBackRest
    u = urlsplit(entry["url"])
    path = u.path.lstrip("/")
    bucket, _, key = path.partition("/")
    key = unquote(key)
    q = parse_qs(u.query, keep_blank_values=True)
    method = entry["method"].upper()
    what = f"{method} /{path}" + (f"?{u.query}" if u.query else "")

    def call(action: str, k: str = key) -> S3Call:
        return S3Call(identity, bucket, action, k, what)

    if not bucket:
        return [call("s3:ListAllMyBuckets", "")]
    if not key:  # bucket-level
        if method == "POST" and "delete" in q:
            keys = [unquote(k) for k in DELETE_KEY.findall(_body(entry))]
            return [call(grants.DELETE, k) for k in keys] or [call(grants.DELETE, "")]
        if method in ("GET", "HEAD"):
            for param, action in (("versions", "s3:ListBucketVersions"),
                                  ("uploads", "s3:ListBucketMultipartUploads"),
                                  ("location", "s3:GetBucketLocation"),
                                  ("versioning", "s3:GetBucketVersioning"),
                                  ("policy", "s3:GetBucketPolicy")):
                if param in q:
                    return [call(action, "")]
            if method == "HEAD":
                return [call(grants.LIST, "")]
            return [call(grants.LIST, q.get("prefix", [""])[0])]
        return [call(f"unknown:{method} bucket {sorted(q)}", "")]
    if method in ("GET", "HEAD"):
        if "uploadId" in q:
            return [call("s3:ListMultipartUploadParts")]
        if "versionId" in q:
            return [call("s3:GetObjectVersion")]
        if "tagging" in q or "acl" in q:
            return [call(f"s3:GetObject{'Tagging' if 'tagging' in q else 'Acl'}")]
        return [call(grants.GET)]
    if method == "PUT":
        if "tagging" in q or "acl" in q:
            return [call(f"s3:PutObject{'Tagging' if 'tagging' in q else 'Acl'}")]
        out = [call(grants.PUT)]  # simple upload, or a part of a multipart upload
        source = headers.get("x-amz-copy-source")
        if source:
            src_bucket, _, src_key = unquote(source).lstrip("/").partition("/")
            out.append(S3Call(identity, src_bucket, grants.GET, src_key, what))
        return out
    if method == "POST" and ("uploads" in q or "uploadId" in q):
        return [call(grants.PUT)]  # create / complete a multipart upload
    if method == "DELETE":
        if "uploadId" in q:
            return [call("s3:AbortMultipartUpload")]
        if "versionId" in q:
            return [call("s3:DeleteObjectVersion")]
        return [call(grants.DELETE)]
    return [call(f"unknown:{method} object {sorted(q)}")]


def outside_grants(calls: Iterable[S3Call], buckets: dict[str, str]) -> list[str]:
    """Calls a workload made that its row of grants.GRANTS does not allow (action, bucket or
    key prefix); `buckets`: bucket name -> "landing"/"backup"."""
    out = []
    for c in calls:
        if not c.identity:
            continue
        logical = buckets.get(c.bucket)
        ok = logical is not None and any(
            g.bucket == logical and c.action in g.actions and c.key.startswith(g.prefix)
            for g in grants.GRANTS[c.identity])
        if not ok:
            out.append(f"{c} is not in its row of infra/components/grants.GRANTS")
    return out
