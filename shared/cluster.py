"""A cluster's secrets and layout: ``nbpool cluster init`` makes them, ``nbpool up --role`` uses them.

A cluster is a NATS JetStream cluster of 3 (or 5) bus nodes, sandbox hosts (a Docker engine and a
spawner each) and a proxy tier (Traefik, router, gateway, culler). ``nbpool cluster init DIR
--bus NAME=ADDRESS ...`` writes one folder per kind of machine, each holding only what that
machine needs (copy it there; ``nbpool up --role ROLE --cluster FOLDER`` reads it):

==================  =========================================================================
folder              holds
==================  =========================================================================
``bus-<name>/``     the node's TLS key and certificate (server and route), the CA certificate,
                    ``nats.conf`` (the users' bcrypt hashes and permissions, nbpool.busauth)
``host/``           the CA certificate, ``spawner.password``
``proxy/``          the CA certificate, ``gateway``/``router``/``culler.password``
``operator/``       the CA certificate, ``operator.password`` (``nbpool status``/``events``)
``ca/``             the CA's private key: stays with whoever runs ``cluster init``
==================  =========================================================================

Every folder also has ``cluster.json``: the instance, the replicas, the sync setting and every
bus node's address and ports. Clients connect with TLS to all nodes (``tls://``), checking the
servers' certificates against the CA, and log in with their role's password; the nodes' routes
are TLS both ways (each node shows its certificate, and checks the other's). Files are 0600 in
0700 folders. Running ``cluster init`` again keeps the CA, the passwords and the certificates;
delete a file to make a new one (rotation: README "Several machines").

Sync: with 3 replicas, a write (a claim's compare-and-set) is acknowledged once a majority of
nodes has it; nats-server writes it to the file system at once and flushes to disk every
``sync`` (nats-server's ``sync_interval``, default 2 min). A node's crash (``kill -9``, the
process) loses nothing the OS has; a machine's power loss loses at most its own unflushed tail,
which the other two still hold. Only two machines losing power within one interval could lose an
acknowledged write: ``--sync always`` flushes every write, at a cost the benchmark measures.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nbpool import busauth
from nbpool.names import Names

__all__ = ["BusNode", "ClusterError", "ClusterSpec", "init", "nats_config", "read_spec"]

SPEC = "cluster.json"
CA_DAYS = 10 * 365
CERT_DAYS = 365
#: The proxy tier's roles (the gateway, router and culler run there).
PROXY_ROLES = ("gateway", "router", "culler")


class ClusterError(Exception):
    """A cluster folder or a ``cluster init`` argument nbpool cannot use."""


@dataclass(frozen=True)
class BusNode:
    """One NATS server of the cluster."""

    name: str
    host: str
    client_port: int = 4222
    route_port: int = 6222

    @property
    def client_url(self) -> str:
        return f"tls://{_netloc(self.host, self.client_port)}"

    @property
    def route_url(self) -> str:
        return f"nats-route://{_netloc(self.host, self.route_port)}"


@dataclass(frozen=True)
class ClusterSpec:
    """What every machine of a cluster knows about it (``cluster.json``)."""

    instance: str
    bus: list[BusNode]
    replicas: int = 3
    sync: str = "default"
    name: str = "nbpool"

    @property
    def nats_url(self) -> str:
        """Every node's client address, comma-separated (``NBPOOL_NATS_URL``)."""
        return ",".join(node.client_url for node in self.bus)

    def node(self, name: str) -> BusNode:
        for node in self.bus:
            if node.name == name:
                return node
        raise ClusterError(f"no bus node {name!r} in this cluster ({', '.join(n.name for n in self.bus)})")


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_node(text: str) -> BusNode:
    """``NAME=HOST[:CLIENT_PORT[:ROUTE_PORT]]`` (a command-line ``--bus``)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ClusterError(f"--bus {text!r}: expected NAME=HOST[:CLIENT_PORT[:ROUTE_PORT]]")
    if not name.replace("-", "").isalnum():
        raise ClusterError(f"--bus {text!r}: a node's name is letters, digits and '-'")
    host, *ports = rest.split(":")
    try:
        numbers = [int(p) for p in ports]
    except ValueError:
        raise ClusterError(f"--bus {text!r}: ports are numbers") from None
    if len(numbers) > 2 or any(not 0 < p < 65536 for p in numbers):
        raise ClusterError(f"--bus {text!r}: at most two ports, each 1-65535")
    return BusNode(name, host, *numbers)


def read_spec(folder: Path) -> ClusterSpec:
    """The ``cluster.json`` of a cluster folder."""
    try:
        raw = json.loads((folder / SPEC).read_text())
        nodes = [BusNode(**node) for node in raw.pop("bus")]
        return ClusterSpec(bus=nodes, **raw)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ClusterError(f"{folder / SPEC}: not a cluster folder ({err})") from None


# ---- certificates ---------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"nbpool cluster {name} CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_node_cert(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, node: BusNode
                    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A node's certificate: its name and address, for serving clients and for routes both ways."""
    key = _key()
    names: list[x509.GeneralName] = [x509.DNSName(node.name)]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(node.host)))
    except ValueError:
        names.append(x509.DNSName(node.host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node.name)]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _write(path: Path, text: str) -> None:
    """Write a file readable by its owner only (0600)."""
    busauth.write_private(path, text)


# ---- init -----------------------------------------------------------------------------------


def init(folder: Path, nodes: list[BusNode], instance: str = "nbpool", replicas: int = 3, sync: str = "default") -> ClusterSpec:
    """Make (or refresh) a cluster's folders (see the module docstring); the cluster's description."""
    if len(nodes) < 3 or len(nodes) % 2 == 0:
        raise ClusterError(f"a cluster needs an odd number of bus nodes, 3 or more (got {len(nodes)}): a majority must survive one's loss")
    if len({n.name for n in nodes}) != len(nodes):
        raise ClusterError("bus node names must differ")
    if len({(n.host, n.client_port) for n in nodes}) != len(nodes) or len({(n.host, n.route_port) for n in nodes}) != len(nodes):
        raise ClusterError("two bus nodes share an address and port")
    if not 1 <= replicas <= len(nodes):
        raise ClusterError(f"--replicas must be between 1 and the number of bus nodes ({len(nodes)})")
    if sync != "default" and sync != "always" and not sync.rstrip("smh").isdigit():
        raise ClusterError(f"--sync {sync!r}: 'default', 'always' or a duration such as 10s or 1m")
    _private_dir(folder)
    spec = ClusterSpec(instance=instance, bus=nodes, replicas=replicas, sync=sync)
    spec_text = json.dumps(asdict(spec), indent=1) + "\n"

    ca_dir = _private_dir(folder / "ca")
    if (ca_dir / "ca.key").exists() and (ca_dir / "ca.pem").exists():
        ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    else:
        ca_key, ca = _make_ca(spec.name)
        _write(ca_dir / "ca.key", _pem_key(ca_key))
        _write(ca_dir / "ca.pem", _pem_cert(ca))
    ca_pem = _pem_cert(ca)

    # Passwords are made once, in the operator's own credentials folder, and handed to each machine.
    secrets = _private_dir(ca_dir / "credentials")
    conf = busauth.provision(secrets, Names(instance))

    def machine(name: str, roles: tuple[str, ...]) -> Path:
        where = _private_dir(folder / name)
        _write(where / SPEC, spec_text)
        _write(where / "ca.pem", ca_pem)
        for role in roles:
            _write(where / f"{role}.password", (secrets / f"{role}.password").read_text())
        return where

    machine("host", ("spawner",))
    machine("proxy", PROXY_ROLES)
    machine("operator", (busauth.OPERATOR,))
    for node in nodes:
        where = machine(f"bus-{node.name}", ())
        _write(where / "nats.conf", conf.read_text())
        cert_path = where / "node.pem"
        if cert_path.exists() and _still_matches(cert_path, ca, node):
            continue
        key, cert = _make_node_cert(ca_key, ca, node)
        _write(where / "node.key", _pem_key(key))
        _write(cert_path, _pem_cert(cert))
    return spec


def _still_matches(cert_path: Path, ca: x509.Certificate, node: BusNode) -> bool:
    """Whether a node's existing certificate is from this CA, for this address, and not near its end."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if cert.issuer != ca.subject:
        return False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    wanted = {str(v) for v in sans.get_values_for_type(x509.IPAddress)} | set(sans.get_values_for_type(x509.DNSName))
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return node.host in wanted and left > datetime.timedelta(days=30)


# ---- a bus node's nats-server configuration --------------------------------------------------


def nats_config(folder: Path, node_name: str, store_dir: Path) -> dict[str, Any]:
    """nats-server's configuration for bus node ``node_name`` of the cluster in ``folder``."""
    spec = read_spec(folder)
    node = spec.node(node_name)
    try:
        users = json.loads((folder / "nats.conf").read_text())
    except (OSError, ValueError) as err:
        raise ClusterError(f"{folder / 'nats.conf'}: {err}") from None
    for needed in ("node.pem", "node.key", "ca.pem"):
        if not (folder / needed).exists():
            raise ClusterError(f"{folder / needed} is missing: copy the bus-{node_name} folder of `nbpool cluster init`")
    tls = {"cert_file": str(folder / "node.pem"), "key_file": str(folder / "node.key"), "ca_file": str(folder / "ca.pem"),
           "timeout": 5}
    jetstream: dict[str, Any] = {"store_dir": str(store_dir)}
    if spec.sync != "default":
        jetstream["sync_interval"] = spec.sync
    return {
        "server_name": node.name,
        "listen": _netloc(node.host, node.client_port),
        "tls": tls,
        "jetstream": jetstream,
        "cluster": {
            "name": f"{spec.instance}-{spec.name}",
            "listen": _netloc(node.host, node.route_port),
            "routes": [other.route_url for other in spec.bus if other.name != node.name],
            # Both ends show a certificate of the cluster's CA: only the cluster's nodes may join.
            "tls": {**tls, "verify": True},
        },
        **users,
    }
