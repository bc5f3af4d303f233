"""tickstack infrastructure: the Pulumi program, the shared config renderer, the local environment.

Kept import-light on purpose: `infra.configs` and `infra.local` must work without Pulumi loaded.
"""
