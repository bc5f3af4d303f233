"""The local environment (`python -m infra.local up|down|status|env`). Never imported by Pulumi."""
