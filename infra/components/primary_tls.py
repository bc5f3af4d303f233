"""The primary's certificates: the stack's own CA (pulumi_tls, kept in the state, which the
secrets provider encrypts), the server's certificate (the Service's names) and the backup
workers' client certificate, as CloudNativePG and Crunchy PGO do by default.

The resources are children of the Primary component (database.py), which passes its
`parent=self` options in; their names are the component's name plus a fixed suffix.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_tls as tls

from infra import configs
from infra.components import k8s as kx

# Server certificate validity; `pulumi up` re-issues it within the renewal window (every
# deploy runs `up`), and the pod rolls (the certificate's hash is a pod annotation).
CERT_VALIDITY_HOURS = 365 * 24
CERT_RENEW_HOURS = 60 * 24
CA_VALIDITY_HOURS = 10 * 365 * 24


@dataclass(frozen=True)
class PrimaryTls:
    ca_cert: pulumi.Output[str]  # the CA's PEM (a stack output)
    ca_config_map: pulumi.Output[str]  # ConfigMap with ca.crt: what workers verify with
    server_secret: pulumi.Output[str]  # Secret with the server's certificate and key
    server_cert: pulumi.Output[str]  # the server certificate's PEM (rolls the pod)
    client_tls_secret: pulumi.Output[str]  # Secret with the backup workers' certificate


def issue(name: str, namespace: pulumi.Input[str], *, server_cn: str,
          server_dns_names: pulumi.Input[list[str]], server_secret_name: str, labels: dict,
          child: pulumi.ResourceOptions) -> PrimaryTls:
    """The stack's CA, the server's certificate and the backup workers' client
    certificate; Secrets for the keys, a ConfigMap for the CA."""
    ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256",
                            opts=child)
    ca = tls.SelfSignedCert(
        f"{name}-ca", private_key_pem=ca_key.private_key_pem, is_ca_certificate=True,
        subject={"common_name": "tickstack primary CA", "organization": "tickstack"},
        validity_period_hours=CA_VALIDITY_HOURS,
        allowed_uses=["cert_signing", "crl_signing", "digital_signature"], opts=child)

    def leaf(key: str, cn: str, uses: list[str], dns_names=None) -> tuple:
        k = tls.PrivateKey(f"{name}-{key}-key", algorithm="ECDSA", ecdsa_curve="P256",
                           opts=child)
        req = tls.CertRequest(f"{name}-{key}-csr", private_key_pem=k.private_key_pem,
                              subject={"common_name": cn, "organization": "tickstack"},
                              dns_names=dns_names, opts=child)
        cert = tls.LocallySignedCert(
            f"{name}-{key}-cert", cert_request_pem=req.cert_request_pem,
            ca_private_key_pem=ca_key.private_key_pem, ca_cert_pem=ca.cert_pem,
            validity_period_hours=CERT_VALIDITY_HOURS, early_renewal_hours=CERT_RENEW_HOURS,
            allowed_uses=["digital_signature", "key_encipherment", *uses], opts=child)
        return k, cert

    server_key, server_cert = leaf("server", server_cn, ["server_auth"],
                                   dns_names=server_dns_names)
    client_key, client_cert = leaf("pgbackrest-client", configs.PGBACKREST_CLIENT_CN,
                                   ["client_auth"])

    def tls_secret(key: str, meta_name: str, k, cert, secret_labels: dict):
        return k8s.core.v1.Secret(
            f"{name}-{key}", metadata={"name": meta_name, "namespace": namespace,
                                       "labels": secret_labels},
            type="kubernetes.io/tls",
            string_data={"tls.crt": cert.cert_pem,
                         "tls.key": pulumi.Output.secret(k.private_key_pem),
                         "ca.crt": ca.cert_pem}, opts=child)

    server = tls_secret("tls", server_secret_name, server_key, server_cert, labels)
    client = tls_secret("pgbackrest-client-tls", "tickstack-pgbackrest-client-tls",
                        client_key, client_cert, {"app.kubernetes.io/part-of": kx.PART_OF})
    ca_map = k8s.core.v1.ConfigMap(
        f"{name}-ca", metadata={"name": "tickstack-ca", "namespace": namespace,
                                "labels": {"app.kubernetes.io/part-of": kx.PART_OF}},
        data={"ca.crt": ca.cert_pem}, opts=child)
    return PrimaryTls(ca_cert=ca.cert_pem, ca_config_map=kx.name_of(ca_map),
                      server_secret=kx.name_of(server), server_cert=server_cert.cert_pem,
                      client_tls_secret=kx.name_of(client))
