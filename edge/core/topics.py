"""Topic names, topic filters and a subscription tree with a match cache.

MQTT semantics are the common language of every protocol at the edge: topic levels
are separated by ``/``; in a filter ``+`` matches exactly one level and ``#`` (last
level only) matches the parent and any number of levels below. Topics whose first
level starts with ``$`` (``$SYS/...``) are not matched by a filter starting with a
wildcard (MQTT 3.1.1 section 4.7.2).

:class:`TopicTree` maps filters to ``{key: value}`` entries and answers "who matches
this topic" with one walk of the tree; answers are cached per topic until the tree
changes, because the same few topics are published over and over.

This module raises nothing of its own: invalid filters are the caller's business.
:func:`valid_filter` and :func:`valid_name` are the one home of the wildcard rules;
:func:`edge.mqtt.codec.valid_topic_filter` builds on them and adds the wire's limits
(65535 bytes, no control characters), so ``edge.core`` needs no protocol package.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: Upper bound of cached topics; the cache is dropped wholesale when it is reached.
CACHE_LIMIT = 50_000


def valid_filter(topic_filter: str) -> bool:
    """True if ``topic_filter`` is a well-formed, non-empty MQTT topic filter."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return True
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level == "#":
            if i != last:
                return False
        elif level != "+" and ("+" in level or "#" in level):
            return False
    return True


def valid_name(topic: str) -> bool:
    """True if ``topic`` is a valid topic name to publish to (non-empty, no wildcard, no NUL)."""
    return bool(topic) and "+" not in topic and "#" not in topic and "\x00" not in topic


def matches(topic_filter: str, topic: str) -> bool:
    """True if the topic name ``topic`` matches ``topic_filter``."""
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def filter_contains(outer: str, inner: str) -> bool:
    """True if every topic matched by filter ``inner`` is also matched by ``outer``.

    This is the check for subscription authorization: ``devices/a/#`` contains
    ``devices/a/+/x`` but not ``devices/+/x`` (which merely overlaps it).
    """
    if outer == inner:
        return True
    if outer.startswith(("+", "#")) and inner.startswith("$"):
        # A leading wildcard never matches "$" topics, so it cannot cover them.
        return False
    o_levels = outer.split("/")
    i_levels = inner.split("/")
    for i, level in enumerate(o_levels):
        if level == "#":
            return True
        if i >= len(i_levels):
            return False
        inner_level = i_levels[i]
        if inner_level == "#":
            # inner reaches arbitrarily deep here; only a "#" in outer covers that.
            return False
        if level == "+":
            continue
        if inner_level == "+" or level != inner_level:
            return False
    return len(o_levels) == len(i_levels)


class _Node(Generic[K, V]):
    __slots__ = ("children", "entries")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K, V]] = {}
        self.entries: dict[K, V] = {}


class TopicTree(Generic[K, V]):
    """A trie of topic filters, each holding ``{key: value}`` entries.

    ``add(filter, key, value)`` replaces the value of an existing ``key`` on that
    filter; ``match(topic)`` returns every ``(key, value)`` whose filter matches, a
    key appearing once per matching filter. Results are cached per topic.
    """

    __slots__ = ("_cache", "_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[K, V] = _Node()
        self._cache: dict[str, list[tuple[K, V]]] = {}
        self._count = 0

    def __len__(self) -> int:
        """The number of (filter, key) entries."""
        return self._count

    def add(self, topic_filter: str, key: K, value: V) -> bool:
        """Add or replace ``key`` on ``topic_filter``; True if it was new."""
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        new = key not in node.entries
        node.entries[key] = value
        if new:
            self._count += 1
        self._cache.clear()
        return new

    def remove(self, topic_filter: str, key: K) -> bool:
        """Remove ``key`` from ``topic_filter``; True if it was there. Prunes empty branches."""
        path: list[tuple[_Node[K, V], str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if key not in node.entries:
            return False
        del node.entries[key]
        self._count -= 1
        self._cache.clear()
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.entries or child.children:
                break
            del parent.children[level]
        return True

    def get(self, topic_filter: str) -> dict[K, V]:
        """The entries stored exactly on ``topic_filter`` (a copy)."""
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return {}
            node = child
        return dict(node.entries)

    def match(self, topic: str) -> list[tuple[K, V]]:
        """Every ``(key, value)`` whose filter matches ``topic`` (cached; do not mutate)."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        out: list[tuple[K, V]] = []
        levels = topic.split("/")
        dollar = topic.startswith("$")
        self._walk(self._root, levels, 0, out, dollar)
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = out
        return out

    def _walk(
        self, node: _Node[K, V], levels: list[str], i: int, out: list[tuple[K, V]], dollar: bool
    ) -> None:
        children = node.children
        if i == len(levels):
            out.extend(node.entries.items())
            # "a/#" also matches "a" itself.
            hash_node = children.get("#")
            if hash_node is not None:
                out.extend(hash_node.entries.items())
            return
        wild = not (dollar and i == 0)
        if wild:
            hash_node = children.get("#")
            if hash_node is not None:
                out.extend(hash_node.entries.items())
            plus = children.get("+")
            if plus is not None:
                self._walk(plus, levels, i + 1, out, dollar)
        exact = children.get(levels[i])
        if exact is not None:
            self._walk(exact, levels, i + 1, out, dollar)

    def filters(self) -> Iterator[tuple[str, dict[K, V]]]:
        """Every filter holding entries, with its entries (for introspection)."""
        stack: list[tuple[str | None, _Node[K, V]]] = [(None, self._root)]
        while stack:
            prefix, node = stack.pop()
            for level, child in node.children.items():
                name = level if prefix is None else f"{prefix}/{level}"
                if child.entries:
                    yield name, dict(child.entries)
                stack.append((name, child))
