"""Kernelspecs of published environments, in a shared Jupyter data dir users' servers read."""
import json
import os
import shutil

PREFIX = "broker-"


def kernel_name(env_name):
    return PREFIX + env_name.replace("_", "-")


def write_kernelspec(kernels_dir, env_name, display_name, python):
    """Write (atomically) ``kernels_dir/broker-<env>/kernel.json``; files read-only for others."""
    os.makedirs(kernels_dir, mode=0o755, exist_ok=True)
    os.chmod(kernels_dir, 0o755)
    d = os.path.join(kernels_dir, kernel_name(env_name))
    os.makedirs(d, mode=0o755, exist_ok=True)
    spec = {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "metadata": {"jhub_broker": {"environment": env_name}, "debugger": True},
    }
    tmp = os.path.join(d, ".kernel.json.tmp")
    with open(tmp, "w") as f:
        json.dump(spec, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(d, "kernel.json"))
    return d


def remove_kernelspec(kernels_dir, env_name):
    shutil.rmtree(os.path.join(kernels_dir, kernel_name(env_name)), ignore_errors=True)
