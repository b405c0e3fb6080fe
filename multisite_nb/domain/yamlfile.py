"""Reading one parameter file as YAML, strictly: bounded in size and depth, no aliases, no key twice.

Every parameter file the toolkit reads (campaign, site manifest, world spec) comes through
:func:`read_yaml`, so a bad one is refused before a tree is built, naming the file and line. The
campaign's pipeline file is read through it too (its size, depth, keys) before the LSST loader
reads it again (and the files it imports) as a pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from multisite_nb.domain.errors import ConfigError

__all__ = ["MAX_DEPTH", "MAX_PARAMETER_BYTES", "read_yaml"]

#: A parameter file larger than this is refused before it is parsed (parsing takes ~4 s a MiB here:
#: 30,000 sky units written one per line fit, and ranges, ``tracts: ["0-8000"]``, keep real files small).
MAX_PARAMETER_BYTES = 1024 * 1024
#: Mappings and lists nested deeper than this are refused before they are built (real files: < 6).
MAX_DEPTH = 32

#: libyaml's loader (PyYAML's own wheels carry it), else PyYAML's pure-Python one.
_BASE: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_COLLECTIONS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_COLLECTION_ENDS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


def _scan(path: Path, text: str) -> None:
    """Refuse, from libyaml's event stream (flat, no tree built), what a parameter file never needs.

    Aliases (``*name``, the door to "billion laughs" documents) and nesting deeper than
    :data:`MAX_DEPTH` (a deep tree exhausts the stack of any recursive builder).
    """
    depth = 0
    for event in yaml.parse(text, Loader=_BASE):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(
                f"{path}: {_where(event.start_mark)}: alias *{event.anchor} is not allowed in a parameter file; "
                "write the value out"
            )
        if isinstance(event, _COLLECTIONS):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"{path}: {_where(event.start_mark)}: nested more than {MAX_DEPTH} levels deep; "
                    "a parameter file needs a few"
                )
        elif isinstance(event, _COLLECTION_ENDS):
            depth -= 1


_INT_TAG = "tag:yaml.org,2002:int"
_STR_TAG = "tag:yaml.org,2002:str"
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]*)")


class _StrictLoader(_BASE):
    """libyaml's safe loader, refusing a key given twice in one mapping (the second would silently win).

    An integer is a plain decimal: YAML 1.1's other forms (``0100`` octal, ``0x1F``, ``0b101``,
    ``1_000``, ``1:30`` sexagesimal) are read as texts, which a number's field then refuses, instead
    of ``tract: 0100`` silently meaning tract 64. Plain scalars' types are resolved once per distinct
    text (and plain decimals at once): the resolver's patterns are most of a large file's parse time.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[tuple[str, Any], str] = {}

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is not yaml.ScalarNode or not implicit or not implicit[0]:
            return super().resolve(kind, value, implicit)
        if _DECIMAL.fullmatch(value):
            return _INT_TAG
        key = (value, implicit)
        tag = self._tags.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            tag = self._tags[key] = _STR_TAG if tag == _INT_TAG else tag  # not a plain decimal
        return tag

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                key = None
            if key is None or isinstance(key, (dict, list)):
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, "a key must be a plain value", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a parameter file: UTF-8 YAML of at most :data:`MAX_PARAMETER_BYTES`, nested at most
    :data:`MAX_DEPTH` levels, no duplicate keys, no aliases.

    Raises
    ------
    ConfigError
        Naming the file, and the line for a YAML problem.
    """
    if not path.is_file():
        what = "a folder, not a parameter file" if path.is_dir() else "no such parameter file"
        raise ConfigError(f"{path}: {what}")
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_PARAMETER_BYTES + 1)  # never more, whatever the file grows to
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_PARAMETER_BYTES:
        raise ConfigError(
            f"{path}: larger than a parameter file may be ({MAX_PARAMETER_BYTES:,} bytes); "
            "give sky units as tract ranges"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        _scan(path, text)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a safe loader's subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:  # a constructor's own (a bad date...)
        raise ConfigError(f"{path}: a value YAML cannot build: {type(exc).__name__}: {exc}"[:400]) from None
