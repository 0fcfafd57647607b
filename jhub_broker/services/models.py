"""JSON models of environments, builds and actions (what the REST API returns)."""


def _iso(dt):
    return dt.isoformat() + "Z" if dt else None


def build_model(env, b):
    return {
        "number": b.number, "status": b.status, "reason": b.reason, "current": b.id == env.current_build_id,
        "requirements": b.requirements, "installer": b.installer, "size_bytes": b.size_bytes,
        "created_by": b.created_by, "created": _iso(b.created), "finished": _iso(b.finished),
        "lockfile": b.lockfile,
    }


def env_model(manager, env, builds=True):
    from .environments.kernels import kernel_name
    cur = manager.current_build(env)
    m = {
        "name": env.name, "display_name": env.display_name, "python": env.python,
        "requirements": env.requirements, "kernel_name": kernel_name(env.name),
        "current_build": cur.number if cur else None,
        "building": any(b.status in ("queued", "building", "testing") for b in env.builds),
        "created": _iso(env.created),
    }
    if builds:
        m["builds"] = [build_model(env, b) for b in reversed(env.builds)]
    return m


def action_model(a):
    return {"id": a.id, "user": a.user, "action": a.action, "target": a.target, "detail": a.detail,
            "result": a.result, "build_id": a.build_id, "created": _iso(a.created), "finished": _iso(a.finished)}
