"""Secrets encrypted with the hub's crypt key ($JUPYTERHUB_CRYPT_KEY, as jupyterhub.crypto reads it).

Several keys separated by ``;`` rotate like the hub's: the first encrypts, all decrypt.
"""
import base64
import binascii
import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_ENV = "JUPYTERHUB_CRYPT_KEY"


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


def crypter(env=None):
    value = (env if env is not None else os.environ).get(KEY_ENV, "")
    keys = [k for k in value.replace(",", ";").split(";") if k.strip()]
    if not keys:
        raise SecretError(f"{KEY_ENV} is not set: secrets cannot be stored encrypted. Set it in the hub's "
                          "environment (openssl rand -hex 32), it is passed on to the broker service.")
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
