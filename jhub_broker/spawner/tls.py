"""Per-VM certificates for JupyterHub's ``internal_ssl``.

JupyterHub's own ``Spawner.create_certs`` signs the notebook's certificate before
``start()`` and leaves key and certificate in ``internal_certs_location``.  A VM's
address is not known then, and a private key on the hub's disk is one more thing
to clean up, so OpenStackSpawner signs later: once the VM has its fixed (and
floating) IP, a fresh key pair is made *in memory*, its certificate signed by the
hub's own ``notebooks-ca`` (the certipy store JupyterHub keeps in
``internal_certs_location``) with the VM's addresses as IP SANs, and key,
certificate and the notebook's trust bundle travel to the VM only in the one-time
bootstrap payload.  Nothing of it is written on the hub.
"""
import ipaddress
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .vm_agent import SSL_DIR

NOTEBOOK_CA = "notebooks-ca"
VALID_DAYS = 5 * 365  # as JupyterHub's certipy pairs
# where the VM's agent writes the payload's "ssl" files: the paths JUPYTERHUB_SSL_* name on the VM
VM_CERT_PATHS = {"keyfile": SSL_DIR + "/key.pem", "certfile": SSL_DIR + "/cert.pem", "cafile": SSL_DIR + "/ca.pem"}


def alt_name(name):
    """``IP:1.2.3.4`` / ``DNS:host`` (OpenSSL style, as JupyterHub's ``ssl_alt_names``) -> x509 GeneralName."""
    kind, _, value = name.partition(":")
    if kind == "IP":
        return x509.IPAddress(ipaddress.ip_address(value))
    if kind == "DNS":
        return x509.DNSName(value)
    raise ValueError(f"unsupported subjectAltName {name!r} (use IP:... or DNS:...)")


def alt_names_for(addresses, extra=()):
    """IP SANs for ``addresses`` followed by ``extra`` names, without duplicates, in order."""
    names = []
    for entry in [f"IP:{a}" for a in addresses if a] + list(extra):
        if entry not in names:
            names.append(entry)
    return names


def sign_notebook_pair(certs_dir, common_name, alt_names, trust_bundle, ca_name=NOTEBOOK_CA, bits=2048):
    """A new key and a certificate for it signed by the hub's ``ca_name``; nothing touches the disk.

    Returns ``{"key", "cert", "ca"}`` as PEM text: the keys the VM agent reads from the
    bootstrap payload's ``ssl`` slot (``ca`` is the notebook's trust bundle: the CAs whose
    client certificates it accepts, i.e. the hub's and the proxy's).
    """
    from certipy import Certipy

    certipy = Certipy(store_dir=certs_dir)
    ca = certipy.store.get_files(ca_name)
    ca_cert, ca_key = ca.cert.load(), ca.key.load()
    key = certipy.create_key_pair("rsa", bits)
    request = certipy.create_request(key, CN=common_name)
    now = datetime.now(timezone.utc)
    extensions = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        # the notebook serves the hub/proxy and is itself a client of the hub's API
        (x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]), True),
        (x509.SubjectAlternativeName([alt_name(n) for n in alt_names]), False),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), False),
    ]
    cert = certipy.sign(request, (ca_cert, ca_key), (now - timedelta(minutes=5), now + timedelta(days=VALID_DAYS)),
                        extensions=extensions)
    with open(trust_bundle) as f:
        bundle = f.read()
    return {
        "key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode(),
        "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "ca": bundle,
    }
