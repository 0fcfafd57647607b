"""Injected faults: latency, error answers, lost answers, dropped connections and hangs, per route.

A rule is a dict:

- where it applies: ``path`` (regex searched in the request path), ``method``, ``service``;
- how often: ``rate`` (0..1, share of matching requests it hits; default 1), ``count`` (how many times
  it may fire; default unlimited);
- what it does: ``latency`` (seconds added), and at most one of ``status`` (an error answer in the
  service's format, with ``message`` and ``retry_after``), ``drop: true`` (the connection is closed
  with no answer), ``hang: <seconds>`` (nothing is answered for that long, then the connection is
  closed with no answer);
- when: ``when: "before"`` (default: the request is not carried out) or ``"after"`` (the request is
  carried out in full, then its answer is replaced: the client cannot tell that it succeeded).

Rules come from the cloud's config file and the admin-only ``/_emulator/faults`` endpoint; a rule
that makes no sense is refused with a message naming the key.
"""
import asyncio
import numbers
import random
import re

from tornado import web

from .web import _TITLES, APIError

STATUSES = (400, 401, 403, 404, 409, 413, 429, 500, 502, 503, 504)
SERVICES = ("identity", "compute", "network", "image", "volume")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
KEYS = ("path", "method", "service", "rate", "count", "latency", "status", "message", "retry_after",
        "drop", "hang", "when")
_MESSAGES = {
    429: "This request was rate-limited.",
    503: "The server is currently unavailable. Please try again at a later time.",
    500: "An unexpected error prevented the server from fulfilling your request.",
}


def _number(rule, key, low=0.0, high=None, low_open=False):
    value = rule[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"'{key}' must be a number, not {value!r}")
    if value < low or (low_open and value == low) or (high is not None and value > high):
        bound = f"greater than {low}" if low_open else f"at least {low}"
        raise ValueError(f"'{key}' must be {bound}" + (f" and at most {high}" if high is not None else "") +
                         f", not {value!r}")
    return value


def validate(rule):
    """The rule, checked; ValueError naming the key that is wrong."""
    if not isinstance(rule, dict):
        raise ValueError(f"a fault rule is a JSON object, not {type(rule).__name__}")
    for key in rule:
        if key not in KEYS:
            raise ValueError(f"unknown key '{key}' (known: {', '.join(KEYS)})")
    rule = dict(rule)
    if "path" in rule:
        if not isinstance(rule["path"], str):
            raise ValueError("'path' must be a regular expression (a string)")
        try:
            re.compile(rule["path"])
        except re.error as e:
            raise ValueError(f"'path' is not a regular expression: {e}") from None
    if "method" in rule:
        if not isinstance(rule["method"], str) or rule["method"].upper() not in METHODS:
            raise ValueError(f"'method' must be one of {', '.join(METHODS)}, not {rule['method']!r}")
        rule["method"] = rule["method"].upper()
    if "service" in rule and rule["service"] not in SERVICES:
        raise ValueError(f"'service' must be one of {', '.join(SERVICES)}, not {rule['service']!r}")
    if "rate" in rule:
        _number(rule, "rate", 0.0, 1.0)
    if "count" in rule and rule["count"] is not None:
        if isinstance(rule["count"], bool) or not isinstance(rule["count"], int) or rule["count"] < 1:
            raise ValueError(f"'count' must be a whole number of at least 1, not {rule['count']!r}")
    if "latency" in rule:
        _number(rule, "latency")
    if "status" in rule:
        if isinstance(rule["status"], bool) or rule["status"] not in STATUSES:
            raise ValueError(f"'status' must be one of {', '.join(map(str, STATUSES))}, not {rule['status']!r}")
        rule["status"] = int(rule["status"])
    if "drop" in rule and not isinstance(rule["drop"], bool):
        raise ValueError(f"'drop' must be true or false, not {rule['drop']!r}")
    if "hang" in rule:
        _number(rule, "hang", low_open=True)
    actions = [k for k in ("status", "drop", "hang") if rule.get(k)]
    if len(actions) > 1:
        raise ValueError(f"'{actions[1]}' cannot be combined with '{actions[0]}': a request gets one answer")
    for key in ("message", "retry_after"):
        if key in rule and "status" not in rule:
            raise ValueError(f"'{key}' needs 'status' (it is part of the error answer)")
    if "message" in rule and not isinstance(rule["message"], str):
        raise ValueError("'message' must be a string")
    if "retry_after" in rule:
        _number(rule, "retry_after")
    if "when" in rule:
        if rule["when"] not in ("before", "after"):
            raise ValueError(f"'when' must be \"before\" or \"after\", not {rule['when']!r}")
        if not actions:
            raise ValueError("'when' needs 'status', 'drop' or 'hang' (what replaces the answer)")
    if not actions and not rule.get("latency"):
        raise ValueError("a fault rule needs 'status', 'drop', 'hang' or 'latency' (what it does)")
    return rule


class Faults:
    """The cloud's fault rules and the random draw that decides when a rule with a ``rate`` fires."""

    def __init__(self, rules=None, seed=1234):
        self.random = random.Random(seed)
        self.rules = []
        self.fired = 0
        self._pending = set()  # hang tasks, kept referenced until they end
        for r in rules or []:
            self.add(r)

    def add(self, rule):
        rule = validate(rule)
        rule.setdefault("rate", 1.0)
        rule["_fired"] = 0
        self.rules.append(rule)
        return rule

    def clear(self):
        self.rules = []

    def public(self):
        return [{k: v for k, v in r.items() if not k.startswith("_")} | {"fired": r["_fired"]} for r in self.rules]

    def _matching(self, handler):
        path = handler.request.path
        if path.startswith("/_emulator"):
            return
        for rule in self.rules:
            if rule.get("method") and rule["method"] != handler.request.method:
                continue
            if rule.get("service") and rule["service"] != handler.service:
                continue
            if rule.get("path") and not re.search(rule["path"], path):
                continue
            if rule.get("count") is not None and rule["_fired"] >= int(rule["count"]):
                continue
            if self.random.random() >= float(rule["rate"]):
                continue
            rule["_fired"] += 1
            self.fired += 1
            yield rule

    async def apply(self, handler):
        """Called before the request is handled.  Latency rules delay it and let later rules apply; the
        first firing rule with an action acts now (``when: before``) or is left on the handler to replace
        its answer (``when: after``, see ``replace_answer``)."""
        for rule in self._matching(handler):
            if rule.get("latency"):
                await asyncio.sleep(float(rule["latency"]))
            if not any(rule.get(k) for k in ("status", "drop", "hang")):
                continue
            if rule.get("when") == "after":
                handler._after_fault = rule
                return
            if rule.get("status"):
                raise self._error(rule)
            self._close_unanswered(handler, rule.get("hang"))
            raise web.Finish()  # the handler is detached: nothing more is done or sent

    def replace_answer(self, handler, rule):
        """The request has been carried out; instead of its answer, send the rule's."""
        if rule.get("status"):
            err = self._error(rule)
            handler.send_error(err.status_code, exc_info=(APIError, err, None))
            return
        self._close_unanswered(handler, rule.get("hang"))

    @staticmethod
    def _error(rule):
        status = int(rule["status"])
        headers = {}
        if status in (413, 429, 503) and rule.get("retry_after") is not None:
            headers["Retry-After"] = str(rule["retry_after"])
        message = rule.get("message") or _MESSAGES.get(status, _TITLES.get(status, "Error"))
        return APIError(status, message, headers=headers)

    def _close_unanswered(self, handler, hang):
        # detach() takes the connection from tornado, which then sends nothing on it
        stream = handler.detach()
        if not hang:
            stream.close()
            return

        async def close_later():
            try:
                await asyncio.sleep(float(hang))
            finally:
                stream.close()
        task = asyncio.ensure_future(close_later())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
