"""The approximate radix tree cache_aware shares with sglang-router (src/policies/tree.rs)."""

from __future__ import annotations

from picker.policies.radix import RadixTree


def test_match_counts_characters_across_tenants_and_names_the_creator() -> None:
    tree = RadixTree()
    assert tree.match("anything") == (None, 0)
    tree.insert("hello world", "a")
    tree.insert("hello there", "b")  # splits "hello world" after "hello "
    assert tree.match("hello world!") == ("a", 11)
    assert tree.match("hello there") == ("b", 11)
    # the shared node "hello " was created by a: it keeps naming a
    assert tree.match("hello you") == ("a", 6)
    assert tree.match("help") == ("a", 3)  # a partial node match counts its characters
    assert tree.chars("a") == 11 and tree.chars("b") == 6 + 5


def test_insert_of_a_held_path_adds_nothing_and_a_prefix_of_a_node_splits_it() -> None:
    tree = RadixTree()
    tree.insert("abcdef", "a")
    tree.insert("abcdef", "a")
    assert tree.chars("a") == 6
    tree.insert("abc", "b")
    assert tree.chars("b") == 3 and tree.match("abcdef") == ("a", 6)
    assert tree.match("abc") == ("a", 3)


def test_eviction_drops_least_recently_used_leaves_of_tenants_over_the_bound() -> None:
    tree = RadixTree()
    tree.insert("system zold question", "a")
    tree.insert("system new question", "a")
    tree.insert("system other", "b")
    tree.match("system new question")  # refreshes the newer leaf
    tree.evict(max_chars=len("system new question"))
    assert tree.match("system zold question") == ("a", len("system "))
    assert tree.match("system new question") == ("a", len("system new question"))
    assert tree.chars("a") == len("system new question")
    assert tree.match("system other") == ("b", len("system other"))  # within its bound
    tree.evict(max_chars=3)  # a leaf at a time, then its parent once it is a's leaf
    assert tree.chars("a") == 0 and tree.chars("b") == 0
    assert tree.match("system other")[1] == 0  # the root keeps its tenants, as SGLang's


def test_remove_forgets_a_tenant_and_the_nodes_only_it_held() -> None:
    tree = RadixTree()
    tree.insert("shared system prompt, then a", "w0")
    tree.insert("shared system prompt, then b", "w1")
    tree.insert("only w0 says this", "w0")
    tree.remove("w0")
    assert tree.chars("w0") == 0
    assert tree.match("only w0 says this")[1] == 0  # its own branch is gone
    assert tree.match("shared system prompt, then a") == ("w1", len("shared system prompt, then "))
    tree.remove("w1")
    assert tree.match("shared system prompt, then b") == (None, 0)  # an empty tree
