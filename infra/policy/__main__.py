"""The policy pack Pulumi runs: `pulumi preview --policy-pack infra/policy` (and `up`).

Every rule in rules.RULES becomes a mandatory policy: a ResourceValidationPolicy when it judges
one resource at a time, a StackValidationPolicy when it needs to see several (a bucket and the
resources that encrypt, lock and restrict it). The rule functions are the ones the tests run
against the offline-rendered graph of both stacks.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Pulumi runs this file from the pack's directory: make the repository importable.
_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from pulumi_policy import (  # noqa: E402
    EnforcementLevel,
    Policy,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from infra.policy import rules  # noqa: E402

PACK_NAME = "tickstack-mandatory"


def production() -> bool:
    """Does the stack being deployed protect its data? Its own config says so
    (tickstack:protectData, default true), or its name is prod. The engine hands the pack the
    stack's name and config (pulumi_policy configures the runtime from them)."""
    import pulumi

    try:
        stack = pulumi.get_stack()
    except Exception:  # no engine settings: offline
        stack = ""
    try:
        protect = pulumi.Config("tickstack").get_bool("protectData")
    except Exception:
        protect = None
    return stack.rsplit("/", 1)[-1] == "prod" or protect is not False and bool(stack)


def _resource(args: ResourceValidationArgs) -> rules.Resource:
    opts = getattr(args, "opts", None)
    return rules.Resource(type=args.resource_type, name=args.name, props=args.props,
                          urn=args.urn, protect=bool(getattr(opts, "protect", False)),
                          production=production())


def _stack_resources(args: StackValidationArgs) -> tuple[list[rules.Resource], dict[str, str]]:
    """The stack's resources for the rules, and label -> URN (to report against)."""
    out, urns = [], {}
    for r in args.resources:
        deps = {d.urn for d in r.dependencies}
        for ds in r.property_dependencies.values():
            deps.update(d.urn for d in ds)
        res = rules.Resource(type=r.resource_type, name=r.name, props=r.props, urn=r.urn,
                             depends_on=tuple(sorted(deps)))
        out.append(res)
        urns[res.label] = r.urn
    return out, urns


def _resource_policy(rule: rules.Rule) -> ResourceValidationPolicy:
    check = rule.resource_check
    assert check is not None

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if rule.types and args.resource_type not in rule.types:
            return
        for message in check(_resource(args)):
            report_violation(message, None)

    return ResourceValidationPolicy(name=rule.name, description=rule.description,
                                    validate=validate,
                                    enforcement_level=EnforcementLevel.MANDATORY)


def _stack_policy(rule: rules.Rule) -> StackValidationPolicy:
    check = rule.stack_check
    assert check is not None

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources, urns = _stack_resources(args)
        for v in check(resources):
            report_violation(v.message, urns.get(v.resource))

    return StackValidationPolicy(name=rule.name, description=rule.description,
                                 validate=validate, enforcement_level=EnforcementLevel.MANDATORY)


def policies() -> list[Policy]:
    out: list[Policy] = []
    for rule in rules.RULES:
        if rule.resource_check is not None:
            out.append(_resource_policy(rule))
        if rule.stack_check is not None:
            out.append(_stack_policy(rule))
    return out


if __name__ == "__main__":
    # Serves the pack to the Pulumi engine (blocks); importing this module does not.
    PolicyPack(name=PACK_NAME, policies=policies(), enforcement_level=EnforcementLevel.MANDATORY)
