"""Smoke test of a built environment: start its kernel the way Jupyter does and import its packages.

``python -m jhub_broker.services.environments.smoke --python ENV/bin/python pkg ...``
(run with a Python that has jupyter_client: the builder runs it with the env's own Python, whose ipykernel
brings jupyter_client). Only the standard library and jupyter_client are imported here.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

IMPORT_CODE = r'''
import importlib, importlib.metadata as _md, json as _json
_imported = []
for _name in %s:
    _d = _md.distribution(_name)
    _tops = (_d.read_text("top_level.txt") or "").split()
    if not _tops:
        _tops = sorted({_f.parts[0][:-3] if _f.parts[0].endswith(".py") else _f.parts[0]
                        for _f in (_d.files or []) if _f.parts and not _f.parts[0].startswith((".", "_"))
                        and not _f.parts[0].endswith((".dist-info", ".data", ".pth", ".egg-info"))
                        and (_f.parts[0].endswith(".py") or len(_f.parts) > 1) and _f.parts[0] != "bin"})
    for _top in _tops:
        if _top.isidentifier() and not _top.startswith("_"):
            importlib.import_module(_top)
            _imported.append(_top)
print("imported:", _json.dumps(_imported))
'''


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python", required=True, help="the environment's python")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("packages", nargs="*", help="distribution names whose modules must import")
    args = parser.parse_args(argv)

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    tmp = tempfile.mkdtemp(prefix="jhub-broker-smoke-")
    # the kernel's runtime and IPython files stay in the throwaway dir
    os.environ.update(JUPYTER_RUNTIME_DIR=os.path.join(tmp, "runtime"), IPYTHONDIR=os.path.join(tmp, "ipython"),
                      JUPYTER_DATA_DIR=os.path.join(tmp, "data"), JUPYTER_CONFIG_DIR=os.path.join(tmp, "config"))
    try:
        kdir = os.path.join(tmp, "kernels", "smoke")
        os.makedirs(kdir)
        with open(os.path.join(kdir, "kernel.json"), "w") as f:
            json.dump({"argv": [args.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                       "display_name": "smoke", "language": "python"}, f)
        ksm = KernelSpecManager(kernel_dirs=[os.path.join(tmp, "kernels")], ensure_native_kernel=False)
        km = KernelManager(kernel_name="smoke", kernel_spec_manager=ksm, connection_file=os.path.join(tmp, "c.json"))
        km.start_kernel(cwd=tmp, env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
        kc = km.client()
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=args.timeout)
            print("kernel started", flush=True)
            outputs = []

            def hook(msg):
                c = msg["content"]
                if msg["msg_type"] == "stream":
                    outputs.append(c["text"])
                elif msg["msg_type"] == "error":
                    outputs.append("\n".join(c.get("traceback", [])) or c.get("evalue", ""))

            reply = kc.execute_interactive(IMPORT_CODE % json.dumps(args.packages), timeout=args.timeout,
                                           output_hook=hook)
            out = "".join(outputs).rstrip()
            if out:
                print(out, flush=True)
            if reply["content"]["status"] != "ok":
                c = reply["content"]
                print(f"smoke test failed: {c.get('ename')}: {c.get('evalue')}", flush=True)
                return 1
            print("smoke test passed", flush=True)
            return 0
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
