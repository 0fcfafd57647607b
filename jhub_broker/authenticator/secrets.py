"""Secrets encrypted with the hub's crypt key ($JUPYTERHUB_CRYPT_KEY, as jupyterhub.crypto reads it).

Several keys separated by ``;`` rotate like the hub's: the first encrypts, all decrypt.
"""
import base64
import binascii
import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_ENV = "JUPYTERHUB_CRYPT_KEY"
# The broker service gets the key as a 0600 file named here (its path, never the key, is in its environment):
# JupyterHub stores a service's environment in its database.
KEY_FILE_ENV = "JHUB_BROKER_CRYPT_KEY_FILE"


class SecretError(Exception):
    pass


def _fernet_key(key):
    """A hub crypt key (32 bytes as urlsafe base64 or hex, like jupyterhub.crypto accepts) as a Fernet key."""
    key = key.strip()
    for decode in (base64.urlsafe_b64decode, binascii.a2b_hex):
        try:
            raw = decode(key.encode())
        except (ValueError, binascii.Error):
            continue
        if len(raw) == 32:
            return base64.urlsafe_b64encode(raw)
    raise SecretError(f"{KEY_ENV} holds a key that is not 32 bytes of base64 or hex")


def _key_value(env):
    value = env.get(KEY_ENV, "")
    path = env.get(KEY_FILE_ENV, "")
    if not value.strip() and path:
        try:
            with open(path) as f:
                value = f.read()
        except OSError as e:
            raise SecretError(f"the crypt key file {path} cannot be read: {e.strerror}") from None
    return value


def crypter(env=None):
    value = _key_value(env if env is not None else os.environ)
    keys = [k for k in value.replace(",", ";").split(";") if k.strip()]
    if not keys:
        raise SecretError(f"{KEY_ENV} is not set: secrets cannot be stored encrypted. Set it in the hub's "
                          "environment (openssl rand -hex 32), the broker service gets it as a 0600 file.")
    return MultiFernet([Fernet(_fernet_key(k)) for k in keys])


def encrypt(plain):
    return crypter().encrypt(plain.encode()).decode()


def decrypt(token):
    try:
        return crypter().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretError(f"a stored secret cannot be decrypted with {KEY_ENV} (was the key changed?)") from None


def mask(plain):
    """What a page may show of a secret: never more than its last 2 characters."""
    if not plain:
        return ""
    return "•" * 8 + (plain[-2:] if len(plain) >= 12 else "")
