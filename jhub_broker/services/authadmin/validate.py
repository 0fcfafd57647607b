"""Validate a generated config fragment in a fresh interpreter (``python -m ...validate FRAGMENT [REQUIRED...]``).

Loads it with traitlets' PyFileConfigLoader as the hub would, imports the authenticator class, instantiates it
with the config (trait types are checked) and checks the required settings are set. Prints one JSON line
``{"ok", "class", "errors"}``; never prints setting values.
"""
import json
import os
import sys


def validate(path, required=()):
    from traitlets.config import PyFileConfigLoader
    from traitlets.utils.importstring import import_item
    errors, cls_name = [], ""
    try:
        cfg = PyFileConfigLoader(os.path.basename(path), path=os.path.dirname(os.path.abspath(path))).load_config()
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "class": "", "errors": [f"the file does not load: {type(e).__name__}: "
                                                      f"{str(e).splitlines()[0][:300] if str(e) else ''}"]}
    cls_name = cfg.JupyterHub.get("authenticator_class", "")
    if not isinstance(cls_name, str) or not cls_name:
        return {"ok": False, "class": "", "errors": ["the file sets no JupyterHub.authenticator_class"]}
    try:
        cls = import_item(cls_name)
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "class": cls_name, "errors": [f"{cls_name} cannot be imported: {type(e).__name__}: "
                                                           f"{e}"[:400]]}
    try:
        inst = cls(config=cfg)
    except Exception as e:  # noqa: BLE001
        # trait errors name the trait; keep only the first line, values may follow
        return {"ok": False, "class": cls_name, "errors": [f"{cls_name} refuses the settings: "
                                                           f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"]}
    for name in required:
        if not getattr(inst, name, None):
            errors.append(f"{name} is required but not set")
    return {"ok": not errors, "class": cls_name, "errors": errors}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(validate(argv[0], argv[1:])))


if __name__ == "__main__":
    main()
