"""tickstack workers: `python -m workers <command>` (migrate, ingest, stream, embed, ...).

Never imports `infra` — the worker image carries no Pulumi.
"""
