"""Topic matching, filter containment and the subscription tree."""

from __future__ import annotations

import pytest

from edge.core.topics import TopicTree, filter_contains, matches, valid_filter, valid_name


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "/b", True),
        ("+", "/b", False),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/+/c", "a//c", True),
        ("a/b", "a/b/", False),
    ],
)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        ("devices/a/#", "devices/a/#", True),
        ("devices/a/#", "devices/a", True),
        ("devices/a/#", "devices/a/+/x", True),
        ("devices/a/#", "devices/+/x", False),
        ("devices/a/#", "devices/#", False),
        ("devices/+/x", "devices/a/x", True),
        ("devices/+/x", "devices/+/x", True),
        ("devices/+/x", "devices/a/#", False),
        ("#", "anything/#", True),
        ("#", "$SYS/#", False),
        ("a/+", "a", False),
        ("a/+/#", "a/#", False),
    ],
)
def test_filter_contains(outer: str, inner: str, expected: bool) -> None:
    assert filter_contains(outer, inner) is expected


def test_validity_helpers() -> None:
    assert valid_filter("a/+/#")
    assert not valid_filter("a/#/b")
    assert not valid_filter("")
    assert valid_name("a/b")
    assert not valid_name("a/+")


def test_tree_match_add_remove_and_cache_invalidation() -> None:
    tree: TopicTree[str, int] = TopicTree()
    assert tree.add("a/+/c", "s1", 1)
    assert tree.add("a/#", "s2", 0)
    assert tree.add("#", "s3", 2)
    assert not tree.add("a/#", "s2", 1)  # replaces the value
    assert sorted(tree.match("a/b/c")) == [("s1", 1), ("s2", 1), ("s3", 2)]
    assert sorted(tree.match("a")) == [("s2", 1), ("s3", 2)]
    assert tree.match("$SYS/a") == []
    assert tree.remove("a/+/c", "s1")
    assert not tree.remove("a/+/c", "s1")
    assert not tree.remove("no/such", "s1")
    assert sorted(tree.match("a/b/c")) == [("s2", 1), ("s3", 2)]
    assert len(tree) == 2
    assert dict(tree.filters()) == {"a/#": {"s2": 1}, "#": {"s3": 2}}
    assert tree.get("a/#") == {"s2": 1}


def test_tree_prunes_and_handles_empty_levels() -> None:
    tree: TopicTree[str, int] = TopicTree()
    tree.add("/a", "k", 0)
    assert tree.match("/a") == [("k", 0)]
    assert dict(tree.filters()) == {"/a": {"k": 0}}
    tree.remove("/a", "k")
    assert list(tree.filters()) == []
