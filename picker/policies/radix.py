"""SGLang's approximate radix tree: which worker (tenant) was sent which prompt text.

A port of sglang-router 0.3.2's `Tree` (lightseekorg/smg at c7f9bf9f5, the commit that
released 0.3.2: src/policies/tree.rs), kept to what `cache_aware` reads, so that the picker's
cache_aware decides as sglang-router's does:

- the unit is the character, not a token or a block (cache_aware.rs:19-23;
  `prefix_match_with_counts` counts characters, tree.rs:531-619);
- one tree for all tenants: a match walks the tree whoever holds the nodes, and names one
  tenant of the deepest node reached, the one that created it (`last_tenant` is set when a
  node is created or split and never on a later insert, tree.rs:404-452), else the first
  remaining one (tree.rs:570-599). That tenant holds every character matched, since an insert
  marks each node on its path (tree.rs:466-499);
- each tenant's size is the characters of the nodes it holds (tree.rs:413-499), and eviction
  removes a tenant's least recently used leaves while it holds more than `max_chars`
  (`evict_tenant_by_size`, tree.rs:718-821).

Differences, none of which changes a decision before an eviction: a match refreshes the
matched node's access time on every call (SGLang: one call in eight, tree.rs:603-607), and the
fallback tenant, needed only after an eviction, is the oldest remaining one (SGLang: DashMap's
iteration order).
"""

from __future__ import annotations

import heapq
import itertools
import threading

__all__ = ["RadixTree"]


class _Node:
    __slots__ = ("text", "children", "tenants", "creator", "parent")

    def __init__(self, text: str, parent: _Node | None, creator: str | None) -> None:
        self.text = text
        self.children: dict[str, _Node] = {}
        self.tenants: dict[str, int] = {}  # tenant -> last access (a global counter)
        self.creator = creator
        self.parent = parent

    def tenant(self) -> str | None:
        if self.creator is not None and self.creator in self.tenants:
            return self.creator
        return next(iter(self.tenants), None)


def _shared(text: str, start: int, node_text: str) -> int:
    """How many characters of `node_text` `text` repeats from `start` (binary search over C
    `startswith` calls: a Python loop per character would cost ~100x on long prompts)."""
    if text.startswith(node_text, start):
        return len(node_text)
    low, high = 0, min(len(node_text), len(text) - start)
    while low < high:
        middle = (low + high + 1) // 2
        if text.startswith(node_text[:middle], start):
            low = middle
        else:
            high = middle - 1
    return low


class RadixTree:
    """Thread-safe: one lock around each call (the router may decide on several threads)."""

    def __init__(self) -> None:
        self._root = _Node("", None, None)
        self._chars: dict[str, int] = {}
        self._clock = itertools.count(1)
        self._lock = threading.Lock()

    def match(self, text: str) -> tuple[str | None, int]:
        """(the tenant holding the longest prefix of `text`, characters matched); None when
        the tree holds no tenant at all."""
        with self._lock:
            node, at = self._root, 0
            while at < len(text):
                child = node.children.get(text[at])
                if child is None:
                    break
                shared = _shared(text, at, child.text)
                at += shared
                node = child
                if shared < len(child.text):
                    break
            tenant = node.tenant()
            if tenant is not None and node is not self._root:
                node.tenants[tenant] = next(self._clock)
            return tenant, at

    def insert(self, text: str, tenant: str) -> None:
        with self._lock:
            self._root.tenants.setdefault(tenant, 0)
            self._chars.setdefault(tenant, 0)
            node, at = self._root, 0
            while at < len(text):
                first = text[at]
                child = node.children.get(first)
                if child is None:
                    leaf = _Node(text[at:], node, tenant)
                    leaf.tenants[tenant] = next(self._clock)
                    node.children[first] = leaf
                    self._chars[tenant] += len(text) - at
                    return
                shared = _shared(text, at, child.text)
                if shared < len(child.text):  # split the child where the texts part
                    middle = _Node(child.text[:shared], node, child.creator)
                    middle.tenants = dict(child.tenants)
                    child.text = child.text[shared:]
                    child.parent = middle
                    middle.children[child.text[0]] = child
                    node.children[first] = middle
                    child = middle
                if tenant not in child.tenants:
                    child.tenants[tenant] = 0
                    self._chars[tenant] += len(child.text)
                node, at = child, at + shared
            node.tenants[tenant] = next(self._clock)

    def chars(self, tenant: str) -> int:
        """Characters of the nodes `tenant` holds (SGLang's `tenant_char_count`)."""
        return self._chars.get(tenant, 0)

    def evict(self, max_chars: int) -> None:
        """Drop each tenant's least recently used leaves until it holds at most `max_chars`."""
        with self._lock:
            over = {t for t, size in self._chars.items() if size > max_chars}
            if not over:
                return
            heap: list[tuple[int, int, str, _Node]] = []
            order = itertools.count()
            stack = [self._root]
            while stack:
                node = stack.pop()
                stack.extend(node.children.values())
                for tenant in over & node.tenants.keys():
                    if node is not self._root and self._leaf_of(node, tenant):
                        heap.append((node.tenants[tenant], next(order), tenant, node))
            heapq.heapify(heap)
            while heap:
                _, _, tenant, node = heapq.heappop(heap)
                if self._chars[tenant] <= max_chars or not self._leaf_of(node, tenant):
                    continue
                self._chars[tenant] -= len(node.text)
                del node.tenants[tenant]
                parent = node.parent
                assert parent is not None
                if not node.children and not node.tenants:
                    del parent.children[node.text[0]]
                if parent is not self._root and self._leaf_of(parent, tenant):
                    heapq.heappush(heap, (parent.tenants[tenant], next(order), tenant, parent))

    def remove(self, tenant: str) -> None:
        """Forget `tenant` everywhere; nodes no tenant holds any more go too."""
        with self._lock:
            self._chars.pop(tenant, None)
            order = []  # every node, each parent before its children
            stack = [self._root]
            while stack:
                node = stack.pop()
                node.tenants.pop(tenant, None)
                order.append(node)
                stack.extend(node.children.values())
            for node in reversed(order):  # children first: an emptied parent goes after them
                parent = node.parent
                if parent is not None and not node.tenants and not node.children:
                    del parent.children[node.text[0]]

    @staticmethod
    def _leaf_of(node: _Node, tenant: str) -> bool:
        return tenant in node.tenants and not any(
            tenant in child.tenants for child in node.children.values())
