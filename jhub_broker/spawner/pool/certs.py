"""The pool's Docker CA: mutual TLS between the hub and each host's dockerd.

The hub holds one CA per hub (key 0600 in a 0700 directory, ``pool_ca_dir``): it must outlive a hub
restart, since the hosts keep running with certificates it signed and the restarted hub adopts them.
From it the hub signs

- its own *client* certificate (``clientAuth``), kept next to the CA: docker-py reads files;
- each host's *server* certificate (``serverAuth``, the host's fixed IP as SAN), made in memory when
  the host's address is known and handed to the host only in its one-time bootstrap payload.

dockerd runs with ``--tlsverify``: a client without a certificate of this CA (a notebook container,
another host, anyone on the network) is refused during the TLS handshake.
"""
import datetime
import ipaddress
import os
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365
_lock = threading.Lock()


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _write(path, text, mode):
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path + ".tmp", mode)
    os.replace(path + ".tmp", path)


class PoolCA:
    """Loads (or makes, once) the CA and the hub's client certificate in ``directory``."""

    def __init__(self, directory, hub_id):
        self.directory = os.path.abspath(directory)
        self.hub_id = hub_id
        with _lock:
            self._load_or_make()

    @property
    def ca_path(self):
        return os.path.join(self.directory, "ca.pem")

    @property
    def client_paths(self):
        return os.path.join(self.directory, "client.pem"), os.path.join(self.directory, "client-key.pem")

    def _load_or_make(self):
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        key_path = os.path.join(self.directory, "ca-key.pem")
        if os.path.exists(key_path) and os.path.exists(self.ca_path):
            with open(key_path, "rb") as f:
                self._ca_key = serialization.load_pem_private_key(f.read(), None)
            with open(self.ca_path, "rb") as f:
                self._ca_cert = x509.load_pem_x509_certificate(f.read())
        else:
            self._ca_key = ec.generate_private_key(ec.SECP256R1())
            self._ca_cert = self._sign(_name(f"jhub-broker pool CA {self.hub_id}"), self._ca_key.public_key(),
                                       ca=True, days=VALID_DAYS * 10)
            _write(key_path, _pem_key(self._ca_key), 0o600)
            _write(self.ca_path, _pem_cert(self._ca_cert), 0o644)
        cert_path, ckey_path = self.client_paths
        if not (os.path.exists(cert_path) and os.path.exists(ckey_path)):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = self._sign(_name(f"jhub-broker hub {self.hub_id}"), key.public_key(),
                              usage=ExtendedKeyUsageOID.CLIENT_AUTH)
            _write(ckey_path, _pem_key(key), 0o600)
            _write(cert_path, _pem_cert(cert), 0o644)

    def _sign(self, subject, public_key, ca=False, usage=None, addresses=(), days=VALID_DAYS):
        now = datetime.datetime.now(datetime.timezone.utc)
        issuer = subject if ca else self._ca_cert.subject
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                              content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False,
                                              encipher_only=False, decipher_only=False), critical=True)
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if addresses:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]), critical=False)
        return b.sign(self._ca_key, hashes.SHA256())

    def server_pair(self, host_name, address):
        """A fresh key and server certificate for a host's dockerd, as PEM texts; nothing is written."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(_name(host_name[:64]), key.public_key(), usage=ExtendedKeyUsageOID.SERVER_AUTH,
                          addresses=[address])
        return {"key": _pem_key(key), "cert": _pem_cert(cert), "ca": _pem_cert(self._ca_cert)}
