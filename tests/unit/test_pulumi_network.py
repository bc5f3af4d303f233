"""NetworkPolicies: default deny; each pod reaches exactly what it needs (evaluated per pod)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest

from infra.components import database
from infra.components import k8s as kx
from infra.offline.mocking import example_cluster_outputs
from tests.unit.pulumi_stacks import STACKS, graph, pods, stack_value

NP = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


@dataclass(frozen=True)
class Peer:
    """Something a pod may try to reach: a pod (labels, namespace labels) or an IP."""

    port: int
    protocol: str = "TCP"
    labels: dict = field(default_factory=dict)
    namespace: str | None = None  # None: an IP outside the cluster
    ip: str | None = None


def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    assert set(selector) <= {"matchLabels"}, f"evaluator knows matchLabels only: {selector}"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(rule_peer: dict, peer: Peer, own_ns: str) -> bool:
    if "ipBlock" in rule_peer:
        if peer.ip is None:
            return False
        ip = ipaddress.ip_address(peer.ip)
        block = rule_peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if peer.namespace is None:
        return False
    if "namespaceSelector" in rule_peer:
        ns_labels = {"kubernetes.io/metadata.name": peer.namespace}
        if not _selects(rule_peer["namespaceSelector"], ns_labels):
            return False
    elif peer.namespace != own_ns:
        return False
    return _selects(rule_peer.get("podSelector"), peer.labels)


def _port_matches(ports: list | None, peer: Peer) -> bool:
    return not ports or any(p.get("protocol", "TCP") == peer.protocol and p["port"] == peer.port
                            for p in ports)


def allowed(policies: list[dict], pod_labels: dict, peer: Peer, own_ns: str,
            direction: str = "egress") -> bool:
    """Kubernetes semantics: isolated once any policy of that type selects the pod; then only
    the union of the selecting policies' rules is allowed."""
    kind = direction.capitalize()
    selecting = [p["spec"] for p in policies
                 if kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"],
                                                                   pod_labels)]
    if not selecting:
        return True
    key = "to" if direction == "egress" else "from"
    for spec in selecting:
        for rule in spec.get(direction, []):
            peers = rule.get(key)
            if _port_matches(rule.get("ports"), peer) and (
                    not peers or any(_peer_matches(rp, peer, own_ns) for rp in peers)):
                return True
    return False


def policies(stack: str) -> list[dict]:
    return [r.plain for r in graph(stack).of_type(NP)]


def targets(stack: str) -> dict[str, Peer]:
    ns = stack_value(stack, "namespace")
    vpc = ipaddress.ip_network(example_cluster_outputs("eu-west-1", stack)["vpcCidr"])
    return {
        "database": Peer(database.PORT, labels=kx.labels("database", name=database.NAME),
                         namespace=ns),
        "dns": Peer(53, "UDP", labels={"k8s-app": "kube-dns"}, namespace="kube-system"),
        "replica": Peer(5432, ip=str(vpc.network_address + 1234)),
        "s3": Peer(443, ip="52.218.100.1"),
        "metadata": Peer(80, ip="169.254.169.254"),
        "metadata-https": Peer(443, ip="169.254.169.254"),
        "exchange": Peer(9443, ip="13.112.0.10"),
        "other-worker": Peer(9108, labels=kx.labels("ingest"), namespace=ns),
        "other-namespace-db": Peer(5432, labels={"app": "postgres"}, namespace="default"),
    }


# component -> what its pods may reach (everything else must be denied)
EXPECTED = {
    "database": {"dns", "s3"},  # pgBackRest to S3 and STS; never instance metadata
    "migrate": {"dns", "database", "replica"},
    "ingest": {"dns", "database", "replica", "s3", "exchange"},
    "replicate": {"dns", "database", "replica", "s3"},
    "embed": {"dns", "database"},
    "retention": {"dns", "database", "replica"},
    "backup": {"dns", "database", "s3"},
}


def pod_labels(stack: str) -> dict[str, dict]:
    out = {}
    for _, pod in pods(graph(stack)):
        labels = pod["metadata"]["labels"]
        out[labels[kx.COMPONENT]] = labels
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_default_deny_both_ways(stack):
    [deny] = [p for p in policies(stack) if p["metadata"]["name"] == "tickstack-default-deny"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                            "ingress": [], "egress": []}
    for p in policies(stack):
        assert p["metadata"]["namespace"] == stack_value(stack, "namespace")


@pytest.mark.parametrize("stack", STACKS)
def test_every_pod_reaches_exactly_what_it_needs(stack):
    labels = pod_labels(stack)
    assert set(labels) == set(EXPECTED)
    ns = stack_value(stack, "namespace")
    for component, want in EXPECTED.items():
        reach = {name for name, peer in targets(stack).items()
                 if allowed(policies(stack), labels[component], peer, ns)}
        assert reach == want, component


@pytest.mark.parametrize("stack", STACKS)
def test_only_db_clients_reach_the_database_and_nothing_reaches_workers(stack):
    ns = stack_value(stack, "namespace")
    labels = pod_labels(stack)
    db = labels["database"]
    for component, lbl in labels.items():
        peer = Peer(database.PORT, labels=lbl, namespace=ns)
        assert allowed(policies(stack), db, peer, ns, "ingress") is (component != "database")
    stranger = Peer(database.PORT, labels={"app": "debug"}, namespace=ns)
    assert not allowed(policies(stack), db, stranger, ns, "ingress")
    other_ns = Peer(database.PORT, labels=labels["ingest"], namespace="default")
    assert not allowed(policies(stack), db, other_ns, ns, "ingress")
    for component in ("ingest", "embed", "backup"):
        assert not allowed(policies(stack), labels[component],
                           Peer(9108, labels=labels["embed"], namespace=ns), ns, "ingress")


def test_evaluator_sees_a_missing_default_deny():
    # Without the default deny (and its egress isolation), embed could reach S3: the
    # evaluator above must notice, or the tests above prove nothing.
    ns = stack_value("dev", "namespace")
    embed = pod_labels("dev")["embed"]
    rest = [p for p in policies("dev") if p["metadata"]["name"] not in (
        "tickstack-default-deny", "tickstack-allow-dns", "tickstack-db-clients-egress")]
    assert allowed(rest, embed, targets("dev")["s3"], ns)
    assert not allowed(policies("dev"), embed, targets("dev")["s3"], ns)


def test_stream_port_policy_follows_the_url():
    default = {p.plain["metadata"]["name"] for p in graph("dev").of_type(NP)}
    assert "tickstack-stream-egress" in default
    on_443 = graph("dev", **{"tickstack:streamUrl": "wss://stream.binance.com/ws/btcusdt@trade"})
    assert "tickstack-stream-egress" not in {p.plain["metadata"]["name"]
                                             for p in on_443.of_type(NP)}

