"""The primary database: TimescaleDB StatefulSet, its rendered configuration, Service, PDB."""

from __future__ import annotations

import configparser

import pytest

from infra import configs, versions
from infra.components import access, database
from infra.offline.graph import unwrap
from infra.stack_config import StackConfig
from tests.unit.pulumi_stacks import (
    STACKS,
    config,
    config_map_data,
    graph,
    passwords,
    stack_value,
)

STS = "kubernetes:apps/v1:StatefulSet"


def statefulset(stack: str, **overrides) -> dict:
    return graph(stack, **overrides).get(STS, "primary-statefulset").plain


def postgres_container(sts: dict, name: str = database.CONTAINER) -> dict:
    [c] = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def pgbackrest_ini(stack: str) -> configparser.ConfigParser:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(config_map_data(graph(stack), "primary-pgbackrest-config")["pgbackrest.conf"])
    return ini


@pytest.mark.parametrize("stack", STACKS)
def test_one_timescaledb_pod_with_a_retained_volume_sized_by_config(stack):
    sts = statefulset(stack)
    spec = sts["spec"]
    assert spec["replicas"] == 1
    v = versions.load()
    assert postgres_container(sts)["image"] == v.primary_image()
    assert postgres_container(sts)["image"].startswith(
        f"{v.primary_image_repository}:{v.primary_image_tag}")
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == stack_value(
        stack, "primaryStorageSize")
    # The program's own StorageClass: volumes kept (Retain) and growable.
    g = graph(stack)
    [sc] = g.of_type("kubernetes:storage.k8s.io/v1:StorageClass")
    assert claim["spec"]["storageClassName"] == sc.plain["metadata"]["name"]
    assert sc.plain["reclaimPolicy"] == "Retain" and sc.plain["allowVolumeExpansion"] is True
    assert sc.plain["parameters"]["encrypted"] == "true"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                           "whenScaled": "Retain"}


@pytest.mark.parametrize("stack", STACKS)
def test_postgres_preloads_timescaledb_and_archives_wal_with_pgbackrest(stack):
    data = config_map_data(graph(stack), "primary-postgres-config")
    settings = dict(line.split(" = ", 1) for line in data["tickstack.conf"].splitlines()
                    if " = " in line)
    assert settings["shared_preload_libraries"] == "'timescaledb'"
    assert settings["archive_mode"] == "on"
    assert settings["archive_command"] == (
        f"'pgbackrest --config={database.PGBACKREST_CONF} --stanza={configs.STANZA} "
        f"archive-push %p'")
    assert settings["shared_buffers"] == f"'{stack_value(stack, 'primarySharedBuffers')}'"
    assert settings["max_connections"] == str(stack_value(stack, "primaryMaxConnections"))
    # The pod starts Postgres on the rendered file, which includes the shared settings.
    assert "include = 'tickstack.conf'" in data["postgresql.conf"].splitlines()
    args = postgres_container(statefulset(stack))["args"]
    assert args == ["postgres", "-c",
                    f"config_file={database.PG_CONFIG_DIR}/postgresql.conf"]


@pytest.mark.parametrize("stack", STACKS)
def test_pgbackrest_writes_to_the_backup_bucket_with_irsa_and_the_stack_key(stack):
    g = graph(stack)
    ini = pgbackrest_ini(stack)
    glob = ini["global"]
    assert glob["repo1-type"] == "s3"
    assert glob["repo1-s3-bucket"] == g.outputs["backupBucket"]
    assert glob["repo1-s3-region"] == "eu-west-1"
    assert glob["repo1-s3-endpoint"] == "s3.eu-west-1.amazonaws.com"
    assert glob["repo1-s3-key-type"] == "web-id"  # IRSA: no static keys anywhere
    assert glob["repo1-storage-verify-tls"] == "y"
    assert glob["repo1-s3-kms-key-id"] == g.outputs["kmsKeyArn"]
    assert glob["repo1-retention-full"] == str(stack_value(stack, "backupRetentionFull"))
    assert glob["repo1-retention-diff"] == str(stack_value(stack, "backupRetentionDiff"))
    assert "repo1-s3-key" not in glob and "repo1-s3-key-secret" not in glob
    assert ini[configs.STANZA]["pg1-path"] == database.PGDATA
    # Mounted where archive_command and the backup workers look for it.
    sts = statefulset(stack)
    mounts = {m["name"]: m for m in postgres_container(sts)["volumeMounts"]}
    assert mounts["pgbackrest-config"]["mountPath"] == database.PGBACKREST_DIR
    assert mounts["pgbackrest-config"]["readOnly"] is True


@pytest.mark.parametrize("stack", STACKS)
def test_the_pod_runs_as_the_db_service_account_with_its_irsa_role(stack):
    pod = statefulset(stack)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == access.DB_SA
    assert pod["automountServiceAccountToken"] is False  # IRSA projects its own token
    sa = graph(stack).get("kubernetes:core/v1:ServiceAccount", f"access-sa-{access.DB_SA}")
    assert sa.plain["metadata"]["annotations"][access.IRSA_ANNOTATION] == graph(
        stack).outputs["dbRoleArn"]


@pytest.mark.parametrize("stack", STACKS)
def test_superuser_password_is_generated_and_only_in_a_secret(stack):
    g = graph(stack)
    pw = g.get("random:index/randomPassword:RandomPassword", "primary-superuser-password")
    assert pw.plain["length"] >= 32
    secret = g.get("kubernetes:core/v1:Secret", "primary-superuser")
    assert secret.secret_paths() == ["stringData"]
    pg = postgres_container(statefulset(stack))
    env = {e["name"]: e for e in pg["env"]}
    # A mounted file (the image's entry point reads POSTGRES_PASSWORD_FILE), not the env.
    assert "POSTGRES_PASSWORD" not in env
    path = env["POSTGRES_PASSWORD_FILE"]["value"]
    directory, key = path.rsplit("/", 1)
    [mount] = [m for m in pg["volumeMounts"] if m["mountPath"] == directory]
    assert mount["readOnly"] is True
    [vol] = [v for v in statefulset(stack)["spec"]["template"]["spec"]["volumes"]
             if v["name"] == mount["name"]]
    assert vol["secret"] == {"secretName": secret.plain["metadata"]["name"],
                             "defaultMode": 0o440}
    assert key in unwrap(secret.inputs)["stringData"]
    # No generated password in any ConfigMap.
    texts = [str(r.plain) for r in g.of_type("kubernetes:core/v1:ConfigMap")]
    for p in passwords(g):
        assert not any(p in t for t in texts)


@pytest.mark.parametrize("stack", STACKS)
def test_services_are_cluster_internal(stack):
    g = graph(stack)
    svc = g.get("kubernetes:core/v1:Service", "primary-service").plain
    assert svc["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in svc["spec"]["ports"]] == [database.PORT, database.PGBACKREST_PORT]
    headless = g.get("kubernetes:core/v1:Service", "primary-headless").plain
    assert headless["spec"]["clusterIP"] == "None"
    sts = statefulset(stack)
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert g.outputs["primaryHost"] == (f"{svc['metadata']['name']}."
                                        f"{stack_value(stack, 'namespace')}.svc.cluster.local")


@pytest.mark.parametrize("stack", STACKS)
def test_pdb_resources_and_probes_from_config(stack):
    g = graph(stack)
    pdb = g.get("kubernetes:policy/v1:PodDisruptionBudget", "primary-pdb").plain
    assert pdb["spec"]["maxUnavailable"] == stack_value(stack, "primaryMaxUnavailable")
    sts = statefulset(stack)
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]
    c = postgres_container(sts)
    want = stack_value(stack, "primaryResources")
    assert c["resources"]["requests"] == want
    assert c["resources"]["limits"] == want  # Guaranteed QoS for the database
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"][0] == "pg_isready"
    # Postgres may take primaryStartupSeconds to start (WAL replay) before liveness applies.
    startup = c["startupProbe"]
    allowed = config(stack).get("tickstack:primaryStartupSeconds",
                                StackConfig.model_fields["primary_startup_seconds"].default)
    assert startup["periodSeconds"] * startup["failureThreshold"] >= allowed


def test_a_config_change_rolls_the_pod():
    def digest(**overrides):
        return statefulset("dev", **overrides)["spec"]["template"]["metadata"][
            "annotations"]["tickstack.io/config-sha256"]

    assert digest() != digest(**{"tickstack:primarySharedBuffers": "1GB"})
    assert digest() != digest(**{"tickstack:backupRetentionFull": 2})


@pytest.mark.parametrize("stack", STACKS)
def test_pgbackrest_runs_as_a_sidecar_with_its_own_resources_serving_tls(stack):
    sts = statefulset(stack)
    side = postgres_container(sts, database.SIDECAR)
    assert side["command"] == ["pgbackrest", f"--config={database.PGBACKREST_CONF}", "server"]
    assert side["image"] == postgres_container(sts)["image"]
    assert side["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}
    mounts = {m["name"]: m["mountPath"] for m in side["volumeMounts"]}
    assert mounts["data"] == database.PGDATA_MOUNT and mounts["tls"] == database.TLS_DIR
    assert side["ports"] == [{"name": "pgbackrest", "containerPort": database.PGBACKREST_PORT,
                              "protocol": "TCP"}]
    ini = pgbackrest_ini(stack)
    assert ini["global"]["tls-server-auth"] == f"{configs.PGBACKREST_CLIENT_CN}={configs.STANZA}"
    assert ini["global"]["tls-server-cert-file"] == database.SERVER_TLS.cert
    # No postStart hook: the stanza is the stanza Job's (a failure fails the deploy).
    assert "lifecycle" not in postgres_container(sts)


@pytest.mark.parametrize("stack", STACKS)
def test_postgres_serves_tls_only_with_the_stacks_certificate(stack):
    g = graph(stack)
    data = config_map_data(g, "primary-postgres-config")
    assert "ssl = on" in data["tickstack.conf"].splitlines()
    assert f"ssl_cert_file = '{database.SERVER_TLS.cert}'" in data["tickstack.conf"]
    tcp = [ln.split()[0] for ln in data["pg_hba.conf"].splitlines()
           if ln and not ln.startswith(("#", "local"))]
    assert tcp and set(tcp) == {"hostssl"}
    secret = g.get("kubernetes:core/v1:Secret", "primary-tls").plain
    assert secret["type"] == "kubernetes.io/tls"
    vol = [v for v in statefulset(stack)["spec"]["template"]["spec"]["volumes"]
           if v["name"] == "tls"][0]
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]
    assert vol["secret"]["defaultMode"] == 0o440  # Postgres refuses a world-readable key
    csr = g.get("tls:index/certRequest:CertRequest", "primary-server-csr").plain
    assert g.outputs["primaryHost"] in csr["dnsNames"]
    cert = g.get("tls:index/locallySignedCert:LocallySignedCert", "primary-server-cert").plain
    assert "server_auth" in cert["allowedUses"] and cert["earlyRenewalHours"] > 0
