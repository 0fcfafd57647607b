"""Validation of environment names and package specs, with messages a person can act on."""
import re
import unicodedata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,47}")
DISPLAY_NAME_MAX = 100
MAX_SPECS = 500
# installers read a requirement line that looks like an archive file name as a local path
ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".egg")


class ValidationError(ValueError):
    """A user-facing validation error; ``str(err)`` is the message to show."""


# control characters (C0/C1, incl. \x0b \x0c), format characters (bidi overrides, zero-width) and the Unicode
# line/paragraph separators: str.splitlines() and installers would cut a spec in two where users see one line
_INVISIBLE = ("Cc", "Cf", "Zl", "Zp")


def has_invisible(text):
    return any(unicodedata.category(ch) in _INVISIBLE for ch in text)


def shown(value, limit=60):
    """``value`` as an error message quotes it: repr, at most ``limit`` characters of it."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def _type_name(value):
    return {dict: "an object", list: "a list", bool: "true/false", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def validate_env_name(name):
    """Return ``name`` if it is a safe environment name, else raise :class:`ValidationError`."""
    if name is not None and not isinstance(name, str):
        raise ValidationError(f"name must be a string, not {_type_name(name)}.")
    if not name:
        raise ValidationError("Environment name is required.")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise ValidationError(
            f"Invalid environment name {shown(name)}: it must not contain '/', '\\' or '..' or start with '.'.")
    if not NAME_RE.fullmatch(name):
        raise ValidationError(
            f"Invalid environment name {shown(name)}: use 1-48 characters, lowercase letters, digits, '-' or '_', "
            "starting with a letter.")
    return name


def validate_display_name(display_name, default):
    if display_name is not None and not isinstance(display_name, str):
        raise ValidationError(f"display_name must be a string, not {_type_name(display_name)}.")
    display_name = (display_name or "").strip() or default
    if len(display_name) > DISPLAY_NAME_MAX or has_invisible(display_name):
        raise ValidationError(f"Kernel display name must be at most {DISPLAY_NAME_MAX} printable characters.")
    return display_name


def parse_requirement(spec):
    """Parse one PEP 508 requirement, refusing options, URLs, paths and shell-like junk."""
    if not isinstance(spec, str):
        raise ValidationError(f"requirements: each package spec must be a string, not {_type_name(spec)}.")
    text = spec.strip()
    if not text:
        raise ValidationError("Empty package spec.")
    if has_invisible(text):
        raise ValidationError(f"Invalid package spec {shown(text)}: control characters, line separators and "
                              "invisible formatting characters are not allowed; write the spec on one plain line.")
    if text.startswith("-"):
        raise ValidationError(
            f"Invalid package spec {shown(text)}: installer options such as --index-url or -e are not allowed; "
            "give a package name with an optional version, e.g. 'numpy>=1.26'.")
    if len(text) > 300:
        raise ValidationError(f"Invalid package spec {shown(text, 40)}: too long.")
    try:
        req = Requirement(text)
    except InvalidRequirement as e:
        hint = ""
        if ";" in text:
            hint = " (text after ';' must be a valid environment marker such as python_version >= '3.10')"
        raise ValidationError(f"Invalid package spec {shown(text)}: not a PEP 508 requirement{hint}. "
                              f"{str(e)[:300]}") from None
    if req.url or req.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValidationError(f"Invalid package spec {shown(text)}: URLs and paths are not allowed, only packages "
                              "from the configured index.")
    return req


def normalize_requirements(specs):
    """Validate a list of specs; return their canonical strings, one per package (last one wins)."""
    if isinstance(specs, str):
        specs = specs.split("\n")  # only newlines end a line: other separators are refused in the spec
    elif not isinstance(specs, (list, tuple)):
        raise ValidationError(f"requirements must be a list of package specs such as [\"numpy>=1.26\"], "
                              f"not {_type_name(specs)}.")
    by_name = {}
    errors = []
    for raw in specs:
        line = raw.split("#", 1)[0].strip() if isinstance(raw, str) else raw
        if line == "":
            continue
        try:
            req = parse_requirement(line)
        except ValidationError as e:
            errors.append(str(e))
            continue
        by_name[canonicalize_name(req.name)] = str(req)
    if errors:
        more = f" (and {len(errors) - 5} more errors)" if len(errors) > 5 else ""
        raise ValidationError(" ".join(errors[:5]) + more)
    if len(by_name) > MAX_SPECS:
        raise ValidationError(f"At most {MAX_SPECS} packages per environment.")
    return [by_name[k] for k in sorted(by_name)]


def requirement_name(spec):
    return canonicalize_name(Requirement(spec).name)


def parse_lockfile(text):
    """Parse exact pins ``name==version`` (the lockfile format); anything else is an error."""
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = parse_requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version or req.marker:
            raise ValidationError(f"Lockfile line {shown(line)} is not an exact pin name==version.")
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins
