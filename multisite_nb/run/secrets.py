"""Scan run folders for leaked credentials.

Two kinds of evidence are looked for:

* **known secrets** — exact values (the Rucio password, a cached auth token)
  read from the client configuration with :func:`known_secrets_from_rucio_config`;
  they are also matched in their JSON- and HTML-escaped spellings, since
  executed notebooks are JSON and rendered notebooks are HTML;
* **credential patterns** — ``password = ...``, ``Authorization: Bearer ...``,
  ``X-Rucio-Auth-Token: ...``, passwords inside URLs, PEM private keys.

A :class:`Finding` says where (file, line) and what kind, and never carries
the secret itself, so findings can be printed and stored safely.
"""

from __future__ import annotations

import configparser
import html
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from multisite_nb.adapters.rucio.config import token_cache_dir

__all__ = [
    "CREDENTIAL_PATTERNS",
    "Finding",
    "contains_secret",
    "default_rucio_config",
    "known_secrets_from_rucio_config",
    "scan_for_secrets",
]

#: Secrets shorter than this are not searched for by value (too many false hits).
MIN_SECRET_LENGTH = 4

#: Secrets shorter than this only match as a whole word (``secret`` not in ``secrets``).
WHOLE_WORD_BELOW = 12

#: Files larger than this are scanned only up to this many bytes.
MAX_SCAN_BYTES = 64 * 1024 * 1024


# an optional quote, possibly JSON-escaped (\") as inside .ipynb files
_Q = r"""(?:\\?["'])?"""
# values that are clearly not a real password
_PLACEHOLDER = re.compile(
    r"""^(?:none|null|nil|true|false|\*+|x{3,}|\.{3}|…|<[^>]*>|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|%\(.*\)s"""
    r"""|\{\{.*\}\}|redacted|\[redacted\]|changeme|secret|password)$""",
    re.IGNORECASE,
)

#: Name → compiled pattern; group ``value`` is the credential (used for
#: placeholder filtering only, never reported).
CREDENTIAL_PATTERNS: dict[str, re.Pattern[str]] = {
    "password assignment": re.compile(
        r"""(?i)(?<![A-Za-z0-9_])(?:password|passwd|passphrase|pwd)"""
        + _Q
        + r"""\s*[=:]\s*"""
        + _Q
        + r"""(?P<value>[^\s"'\\,;(){}\[\]]{3,})"""
    ),
    "Authorization: Bearer": re.compile(
        r"""(?i)authorization""" + _Q + r"""\s*[=:]\s*""" + _Q + r"""\s*bearer\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})"""
    ),
    "X-Rucio-Auth-Token": re.compile(
        r"""(?i)x-rucio-auth-token""" + _Q + r"""\s*[=:]\s*""" + _Q + r"""(?P<value>[^\s"'\\,;]{8,})"""
    ),
    "password in URL": re.compile(r"""(?i)\b[a-z][a-z0-9+.-]*://[^/\s:@"'\\]+:(?P<value>[^/\s@"'\\]{3,})@"""),
    "private key": re.compile(r"""-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----(?P<value>)"""),
    # environment dumps: RUCIO_PASSWORD=..., PGPASSWORD: ..., AWS_SECRET_ACCESS_KEY=..., PANDA_AUTH_ID_TOKEN=...
    "secret environment variable": re.compile(
        r"""(?<![A-Za-z0-9_])[A-Z][A-Z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|SECRET_ACCESS_KEY|API_KEY|PRIVATE_KEY)"""
        + _Q
        + r"""\s*[=:]\s*"""
        + _Q
        + r"""(?P<value>[^\s"'\\,;]{4,})"""
    ),
    "JSON web token": re.compile(r"""(?P<value>\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"""),
    "X.509 proxy": re.compile(r"""-----BEGIN CERTIFICATE-----(?P<value>)"""),
}

#: Findings of these kinds only count in a file that also holds a private key (a proxy = cert + key).
_NEEDS_KEY = {"X.509 proxy"}


class Finding(BaseModel):
    """One suspected leak.  Safe to print: it never contains the secret.

    Attributes
    ----------
    path : str
        The file.
    line : int
        1-based line number.
    kind : str
        ``"known secret #<n>"`` (index into the secrets given) or a pattern name.
    """

    model_config = ConfigDict(frozen=True)

    path: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}"


def _spellings(secret: str) -> re.Pattern[str]:
    """A pattern for the secret as it may appear in plain text, JSON strings and HTML.

    Short secrets (below :data:`WHOLE_WORD_BELOW` characters) must stand as a
    whole word, so that a weak password does not flag ordinary prose.
    """
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms |= {html.escape(f) for f in list(forms)}
    forms |= {html.escape(f, quote=False) for f in list(forms)}
    alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True) if f)
    if len(secret) < WHOLE_WORD_BELOW:
        return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")
    return re.compile(alternatives)


def _iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for sub in sorted(path.rglob("*")):
                if sub.is_file() and not sub.is_symlink():
                    yield sub
        elif path.is_file():
            yield path


def scan_for_secrets(
    paths: Iterable[str | os.PathLike[str]],
    secrets: Iterable[str] = (),
    *,
    patterns: bool = True,
) -> list[Finding]:
    """Look for secret values and credential patterns in files.

    Parameters
    ----------
    paths : iterable of path
        Files, or folders scanned recursively (every file: a proxy or a log may have no suffix).
    secrets : iterable of str
        Exact values that must not appear (shorter than
        ``MIN_SECRET_LENGTH`` characters are ignored).
    patterns : bool, optional
        Also apply :data:`CREDENTIAL_PATTERNS`.

    Returns
    -------
    list of Finding
        At most one finding per (file, line, kind), in file order.
    """
    wanted = [s for s in dict.fromkeys(secrets) if s and len(s) >= MIN_SECRET_LENGTH]
    spellings = [(i, _spellings(s)) for i, s in enumerate(wanted, start=1)]
    findings: list[Finding] = []
    for path in _iter_files(paths):
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_SCAN_BYTES)
        except OSError:
            continue
        text = data.decode("utf-8", errors="replace")
        seen: set[tuple[int, str]] = set()
        for lineno, line in enumerate(text.splitlines(), start=1):
            for i, rx in spellings:
                if rx.search(line):
                    seen.add((lineno, f"known secret #{i}"))
            if not patterns:
                continue
            for kind, rx in CREDENTIAL_PATTERNS.items():
                for m in rx.finditer(line):
                    value = m.group("value")
                    if value:
                        if _PLACEHOLDER.match(value):
                            continue
                        if line[m.end() : m.end() + 1] in ("(", "["):
                            continue  # code reading a credential, not a credential
                    seen.add((lineno, kind))
                    break
        if not any(k == "private key" for _, k in seen):
            seen = {(ln, k) for ln, k in seen if k not in _NEEDS_KEY}
        findings.extend(Finding(path=str(path), line=ln, kind=k) for ln, k in sorted(seen))
    return findings


def default_rucio_config() -> Path | None:
    """Locate the Rucio client config the way rucio-clients does.

    ``$RUCIO_CONFIG``, then ``$RUCIO_HOME/etc/rucio.cfg``, then
    ``/opt/rucio/etc/rucio.cfg``, then ``$VIRTUAL_ENV/etc/rucio.cfg``;
    ``None`` if none exists.
    """
    candidates: list[Path] = []
    if os.environ.get("RUCIO_CONFIG"):
        candidates.append(Path(os.environ["RUCIO_CONFIG"]))
    if os.environ.get("RUCIO_HOME"):
        candidates.append(Path(os.environ["RUCIO_HOME"]) / "etc" / "rucio.cfg")
    candidates.append(Path("/opt/rucio/etc/rucio.cfg"))
    if os.environ.get("VIRTUAL_ENV"):
        candidates.append(Path(os.environ["VIRTUAL_ENV"]) / "etc" / "rucio.cfg")
    return next((c for c in candidates if c.is_file()), None)


_SECRET_KEY = re.compile(r"(?i)(password|passwd|secret|token)")
_NOT_SECRET_KEY = re.compile(r"(?i)(_path|_file|_dir|lifetime|polling|_auto|audience|scope|issuer|_type)$")
_URL_PASSWORD = re.compile(r"://[^/\s:@]+:([^/\s@]+)@")


def known_secrets_from_rucio_config(
    path: str | os.PathLike[str] | None = None, *, cached_tokens: bool = True
) -> list[str]:
    """Collect secret values from a Rucio config, for :func:`scan_for_secrets`.

    Reads ``[client] password`` and any other ``[client]`` key naming a
    password, secret or token value (not a path or setting), passwords
    embedded in URLs in any section (e.g. ``[database] default``), and, if
    ``cached_tokens``, the auth tokens rucio-clients has cached for this user
    (``auth_token_file_path`` or its temporary token folder).

    Parameters
    ----------
    path : path, optional
        The config file; default :func:`default_rucio_config`.  A missing
        file gives an empty list.
    cached_tokens : bool, optional
        Also read cached token files.

    Returns
    -------
    list of str
        Distinct non-empty values; never print them.
    """
    cfg_path = Path(path) if path is not None else default_rucio_config()
    if cfg_path is None or not cfg_path.is_file():
        return []
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(cfg_path, encoding="utf-8")
    found: list[str] = []
    for section in cfg.sections():
        for key, value in cfg.items(section):
            value = value.strip()
            if not value:
                continue
            if section == "client" and _SECRET_KEY.search(key) and not _NOT_SECRET_KEY.search(key):
                found.append(value)
            found.extend(_URL_PASSWORD.findall(value))
    if cached_tokens and cfg.has_section("client"):
        client = cfg["client"]
        token_files: list[Path] = []
        if client.get("auth_token_file_path"):
            token_files.append(Path(client["auth_token_file_path"]).expanduser())
        else:
            folder = token_cache_dir(client.get("vo"))
            if folder.is_dir():
                token_files.extend(sorted(folder.glob("auth_token_for_*")))
        for tf in token_files:
            try:
                token = tf.read_text(encoding="utf-8").strip()
            except OSError:
                continue
            if token:
                found.append(token)
    return list(dict.fromkeys(v for v in found if v))


def contains_secret(value: object, secrets: Iterable[str]) -> bool:
    """Whether any of ``secrets`` occurs in ``value`` (strings inside dicts/lists too)."""
    wanted = [s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH]
    if not wanted:
        return False
    text = json.dumps(value, default=str, ensure_ascii=False)
    return any(s in text or json.dumps(s, ensure_ascii=False)[1:-1] in text for s in wanted)
