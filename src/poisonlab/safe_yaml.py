"""Bounded YAML reading: every config and ``--set`` value of the package is parsed here.

A config may come from an attacker, so the text is refused, with a one-line
:class:`~poisonlab.errors.PoisonlabError`, when it

* is longer than :data:`MAX_FILE_BYTES` (files) or :data:`MAX_OVERRIDE_CHARS` (``--set``);
* nests deeper than :data:`MAX_DEPTH` collections (checked in the composer, before the
  recursion goes deep);
* would expand to more than :data:`MAX_NODES` nodes: a node reached through an alias counts
  again, recursively, so an alias bomb ("billion laughs") is refused before any object is
  built, while small configs keep their anchors, aliases and merge keys; an alias to a
  collection that contains it (a recursive structure) is refused too;
* holds a number written with more than :data:`MAX_NUMBER_CHARS` characters;
* repeats a key within one mapping (a reader would see one value, poisonlab use the other).

Numbers in scientific notation without a dot (``1e-3``, YAML 1.2) are floats, as users
expect, not strings.
"""
from __future__ import annotations

import os
import re
import stat
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import PoisonlabError, one_line

MAX_FILE_BYTES = 1 << 20
MAX_OVERRIDE_CHARS = 4096
MAX_DEPTH = 50
MAX_NODES = 100_000
MAX_NUMBER_CHARS = 100

_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Limit(Exception):
    """A bound of this module was hit at ``mark`` (a yaml Mark or None)."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.mark = mark


def _line(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with bounded nesting, alias expansion and number length."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open: list[str | None] = []  # anchors of the collections being composed
        self._composed = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            if event.anchor in self._open:
                raise _Limit(f"alias *{one_line(str(event.anchor), 40)} refers to a collection that contains it "
                             f"(a recursive structure)", event.start_mark)
            return super().compose_node(parent, index)
        if len(self._open) >= MAX_DEPTH:
            raise _Limit(f"nests deeper than {MAX_DEPTH} levels", event.start_mark)
        self._composed += 1
        if self._composed > MAX_NODES:
            raise _Limit(f"holds more than {MAX_NODES} values; a config needs far fewer", event.start_mark)
        self._open.append(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()

    def compose_document(self) -> Node:
        node = super().compose_document()
        size = _expanded_size(node, 1, {})
        if size > MAX_NODES:
            raise _Limit(f"expands to more than {MAX_NODES} values through its aliases (an alias bomb?); "
                         f"a config needs far fewer")
        return node

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        """A mapping whose keys are distinct: a repeated key would let a reader of the file see
        one value while poisonlab uses the other (merged ``<<`` keys may still be overridden)."""
        if isinstance(node, MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise _Limit(f"repeats the key '{one_line(key_node.value, 60)}' in one mapping; "
                                     "keep one of them", key_node.start_mark)
                    seen.add(key_node.value)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Node) -> int:
        _check_number_length(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Node) -> float:
        _check_number_length(node)
        return super().construct_yaml_float(node)


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)
BoundedLoader.add_constructor("tag:yaml.org,2002:float", BoundedLoader.construct_yaml_float)
BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+.0123456789"))


def _check_number_length(node: Node) -> None:
    if len(node.value) > MAX_NUMBER_CHARS:
        raise _Limit(f"holds a number written with more than {MAX_NUMBER_CHARS} characters", node.start_mark)


def _expanded_size(node: Node, depth: int, memo: dict[int, tuple[int, int]]) -> int:
    """Nodes under ``node`` as if every alias were copied out; raises past :data:`MAX_DEPTH`
    levels (counting through aliases). ``memo``: id -> (size, height) of nodes already seen,
    so the walk is linear in the distinct nodes and recurses at most MAX_DEPTH deep."""
    return _measure(node, depth, memo, set())[0]


def _measure(node: Node, depth: int, memo: dict[int, tuple[int, int]], path: set[int]) -> tuple[int, int]:
    key = id(node)
    if key in memo:
        size, height = memo[key]
    else:
        if key in path:
            raise _Limit("holds a recursive structure (an alias inside its own anchor)", node.start_mark)
        if depth > MAX_DEPTH:
            raise _Limit(f"nests deeper than {MAX_DEPTH} levels through its aliases", node.start_mark)
        if isinstance(node, SequenceNode):
            children: list[Node] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        path.add(key)
        size, height = 1, 1
        for child in children:
            s, h = _measure(child, depth + 1, memo, path)
            size, height = size + s, max(height, h + 1)
        path.discard(key)
        memo[key] = (size, height)
    if depth - 1 + height > MAX_DEPTH:
        raise _Limit(f"nests deeper than {MAX_DEPTH} levels through its aliases", node.start_mark)
    return size, height


def load(text: str, what: str) -> Any:
    """Parse one YAML document with :class:`BoundedLoader`; ``what`` names the source in errors
    (e.g. ``"config file 'x.yaml'"``). Malformed YAML and every bound: one-line PoisonlabError."""
    loader = None
    try:
        loader = BoundedLoader(text)  # the reader refuses control characters here already
        return loader.get_single_data()
    except _Limit as exc:
        raise PoisonlabError(f"{what} {exc}{_line(exc.mark)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = one_line(getattr(exc, "problem", None) or "invalid YAML", 200)
        raise PoisonlabError(f"{what} is not valid YAML{at}: {problem}") from None
    except RecursionError:  # not reached within the bounds above; never a traceback if it is
        raise PoisonlabError(f"{what} nests too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_override(raw: str, what: str) -> Any:
    """The value of a ``--set`` override parsed as YAML; malformed YAML stays the plain string,
    but the bounds (length, depth, aliases) hold."""
    if len(raw) > MAX_OVERRIDE_CHARS:
        raise PoisonlabError(f"{what}: the value has {len(raw)} characters, more than the {MAX_OVERRIDE_CHARS} "
                             f"allowed; put large settings in the config file")
    loader = None
    try:
        loader = BoundedLoader(raw)
        return loader.get_single_data()
    except _Limit as exc:
        raise PoisonlabError(f"{what}: the value {exc}") from None
    except (yaml.YAMLError, RecursionError):
        return raw
    finally:
        if loader is not None:
            loader.dispose()


def read_bounded(path: Any, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of regular file ``path``, refused past ``limit`` bytes (read at most
    limit + 1); opened without blocking, so a FIFO swapped in after a check cannot make it wait."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise PoisonlabError(f"{what} is not a regular file")
            data = fh.read(limit + 1)
    except OSError as exc:
        raise PoisonlabError(f"{what} cannot be read ({one_line(exc.strerror or type(exc).__name__, 100)})") from None
    if len(data) > limit:
        raise PoisonlabError(f"{what} is larger than {limit // 1024} KiB; a config is a few KiB of YAML")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PoisonlabError(f"{what} is not UTF-8 text") from None
