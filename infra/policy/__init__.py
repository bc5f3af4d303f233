"""tickstack's mandatory policy pack: the rules (rules.py) and their Pulumi wrapper (__main__.py).

`pulumi preview --policy-pack infra/policy` runs the pack under the engine; the tests run the
same rule functions against the offline-rendered graph (tests/unit/test_policy*.py).
"""
