"""What a user reads when a spawn fails: the step, the cloud's own words, the status, what to do.

Everything echoed (the cloud's words, a value the user sent, a VM's console) is clipped and
stripped of control characters first: an error page must not carry a 100 KB value or a terminal
escape back to the browser.
"""
import re

from keystoneauth1 import exceptions as ksa_exc

from .cloud import AMBIGUOUS, FINAL, NOT_DONE, CloudError, classify, error_text, status_of, status_text

# the steps of a spawn, as the user reads them
STEPS = {
    "prepare": "Preparing your server (flavor, image, network, security group)",
    "volume": "Preparing your data volume",
    "server": "Creating your server",
    "address": "Giving your server an address",
    "notebook": "Starting the notebook server on your VM",
    "container": "Starting your notebook in the shared pool",
}

_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]")
# the cloud's words when it said nothing in particular
_GENERIC = {"", "error", "unknown error"}


def clip(value, limit=200, keep_newlines=False):
    """``value`` as text of at most ``limit`` characters, without control or bidi characters."""
    text = str(value)
    if not keep_newlines:
        text = text.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    text = _CONTROLS.sub("", text)
    if len(text) > limit:
        text = text[:limit].rstrip() + f"… ({len(text) - limit} more characters)"
    return text


def advice(exc, text):
    """What the user can do about ``exc``."""
    low = text.lower()
    status = status_of(exc)
    if "quota" in low and (status in (403, 409, 413) or status is None):
        return ("The project's quota is used up: stop one of your other servers, or ask the project's "
                "manager for more quota, then try again.")
    if "too small" in low or "smaller than the minimum" in low:
        return "Choose a bigger flavor in the options form."
    if "no valid host" in low:
        return "The cloud has no room for this server right now: try a smaller flavor or try later."
    if isinstance(exc, CloudError):
        return "If this keeps happening, tell the hub's administrators and include this message."
    kind = classify(exc)
    if kind in (NOT_DONE, AMBIGUOUS):
        return ("The cloud is having trouble right now (the hub retried): try again in a few minutes; if it "
                "keeps failing, tell the hub's administrators.")
    if status in (401, 403):
        return "The cloud refused the hub's credentials or permissions: tell the hub's administrators."
    if status == 404:
        return "Something the hub's configuration names is missing in the cloud: tell the hub's administrators."
    return "Try again; if it keeps failing, tell the hub's administrators and include this message."


def explain(step, exc):
    """The message a user reads for a failed spawn step."""
    doing = STEPS.get(step, "Starting your server")
    if isinstance(exc, CloudError):
        # our own words, which may end with the VM's console
        return f"{doing} failed: {clip(exc.message, 4000, keep_newlines=True)} {advice(exc, exc.message)}"
    words = error_text(exc)
    status = status_of(exc)
    if status is not None:
        answer = f"the cloud answered {status_text(status)}"
    elif isinstance(exc, ksa_exc.ConnectTimeout):
        answer = "the cloud did not answer in time"
    elif classify(exc) != FINAL:
        answer = "the connection to the cloud was lost"
    else:
        answer = f"the hub could not talk to the cloud ({type(exc).__name__})"
    said = clip(words, 500)
    if said.strip().rstrip(".").lower() not in _GENERIC and said not in answer:
        answer += f": {said}"
    return f"{doing} failed: {answer.rstrip('.')}. {advice(exc, words)}"
