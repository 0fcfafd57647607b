"""A local source package whose build backend records what a build can see (its uid and environment).

``make_probe_index(directory)`` writes ``jhub-broker-build-probe-1.0.tar.gz`` into ``directory`` (a find-links
index for the installer) and returns the path of the JSON file the backend writes when the package is built.
The backend is in-tree (PEP 517 ``backend-path``), so the build needs nothing from the network.
"""
import io
import json
import os
import tarfile

NAME = "jhub-broker-build-probe"
VERSION = "1.0"

BACKEND = r'''
import base64, hashlib, json, os, zipfile

PROBE = %(probe)r


def _record():
    with open(PROBE, "w") as f:
        json.dump({"uid": os.getuid(), "euid": os.geteuid(), "env": dict(os.environ)}, f)


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _record()
    dist = "jhub_broker_build_probe-1.0"
    files = {
        "jhub_broker_build_probe/__init__.py": b"",
        dist + ".dist-info/METADATA": b"Metadata-Version: 2.1\nName: jhub-broker-build-probe\nVersion: 1.0\n",
        dist + ".dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: probe\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(dist + ".dist-info/RECORD,,")
    files[dist + ".dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    name = dist + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return name
'''

PYPROJECT = '''[build-system]
requires = []
build-backend = "probe_backend"
backend-path = ["."]

[project]
name = "jhub-broker-build-probe"
version = "1.0"
'''


def make_probe_index(directory):
    """Write the sdist into ``directory``; return the path its build backend writes (world-writable dir)."""
    probe_dir = os.path.join(directory, "probe-out")
    os.makedirs(probe_dir, exist_ok=True)
    os.chmod(probe_dir, 0o1777)  # the build may run as an unprivileged user
    probe = os.path.join(probe_dir, "probe.json")
    top = f"jhub_broker_build_probe-{VERSION}"
    members = {
        "pyproject.toml": PYPROJECT,
        "probe_backend.py": BACKEND % {"probe": probe},
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n",
    }
    path = os.path.join(directory, f"{top}.tar.gz")
    with tarfile.open(path, "w:gz") as t:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    os.chmod(path, 0o644)
    return probe


def read_probe(path):
    with open(path) as f:
        return json.load(f)
