"""Validation of environment names and package specs, with messages a person can act on."""
import re

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,47}")
DISPLAY_NAME_MAX = 100
MAX_SPECS = 500
# installers read a requirement line that looks like an archive file name as a local path
ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".egg")


class ValidationError(ValueError):
    """A user-facing validation error; ``str(err)`` is the message to show."""


def validate_env_name(name):
    """Return ``name`` if it is a safe environment name, else raise :class:`ValidationError`."""
    if not isinstance(name, str) or not name:
        raise ValidationError("Environment name is required.")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise ValidationError(
            f"Invalid environment name {name!r}: it must not contain '/', '\\' or '..' or start with '.'.")
    if not NAME_RE.fullmatch(name):
        raise ValidationError(
            f"Invalid environment name {name!r}: use 1-48 characters, lowercase letters, digits, '-' or '_', "
            "starting with a letter.")
    return name


def validate_display_name(display_name, default):
    display_name = (display_name or "").strip() or default
    if len(display_name) > DISPLAY_NAME_MAX or any(ord(ch) < 32 for ch in display_name):
        raise ValidationError(f"Kernel display name must be at most {DISPLAY_NAME_MAX} printable characters.")
    return display_name


def parse_requirement(spec):
    """Parse one PEP 508 requirement, refusing options, URLs, paths and shell-like junk."""
    if not isinstance(spec, str):
        raise ValidationError("Package spec must be a string.")
    text = spec.strip()
    if not text:
        raise ValidationError("Empty package spec.")
    if text.startswith("-"):
        raise ValidationError(
            f"Invalid package spec {text!r}: installer options such as --index-url or -e are not allowed; "
            "give a package name with an optional version, e.g. 'numpy>=1.26'.")
    if len(text) > 300:
        raise ValidationError(f"Invalid package spec {text[:40]!r}...: too long.")
    try:
        req = Requirement(text)
    except InvalidRequirement as e:
        hint = ""
        if ";" in text:
            hint = " (text after ';' must be a valid environment marker such as python_version >= '3.10')"
        raise ValidationError(f"Invalid package spec {text!r}: not a PEP 508 requirement{hint}. {e}") from None
    if req.url or req.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValidationError(f"Invalid package spec {text!r}: URLs and paths are not allowed, only packages "
                              "from the configured index.")
    return req


def normalize_requirements(specs):
    """Validate a list of specs; return their canonical strings, one per package (last one wins)."""
    if isinstance(specs, str):
        specs = specs.splitlines()
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
        raise ValidationError(" ".join(errors))
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
            raise ValidationError(f"Lockfile line {line!r} is not an exact pin name==version.")
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins
