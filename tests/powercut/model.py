"""What a power cut leaves of a file system: the durable state, kept beside the live one. Pure: no I/O.

How this works
--------------
The live tree is what processes see (the page cache); the durable tree is what the disk would give back
after a power cut. Every node (file, directory, symlink) has at most one place in each tree, recorded
as ``live_at`` and ``durable_at`` (parent directory id, name), and every directory has two entry sets,
``entries`` (live) and ``durable_entries``.

* Creating, unlinking or renaming changes the live tree only.
* ``sync_file`` (fsync or fdatasync of a file) makes the file's current bytes its durable content. A file
  never synced has empty durable content: after a cut, a file whose name survived but whose data was
  never synced comes back empty, as ext4 with delayed allocation gives it back.
* ``sync_dir`` (fsync of a directory) makes the directory's durable entry set equal its live one: new
  names appear, removed ones go, a replaced name points to its new node. A rename is atomic, as in a
  journaled file system: when either end of it becomes durable, the node leaves its old durable place
  and takes its new one, so a node is never lost between two directories nor found in both.
* ``sync_all`` (``sync``) makes the whole live tree durable.

A new directory is reachable after a cut only once its parent was synced after its creation, even
when it was synced itself: this model has no journal that would commit the one with the other.

This is what POSIX and every Linux file system promise, and no more. ext4 (data=ordered) usually keeps
more: its journal commits every 5 s and any fsync commits every pending metadata change (so an fsynced
new file keeps its name), and dirty data is written back after about 30 s. A loss measured with this
model is therefore at least what ext4 would lose, and usually more.

Not modelled: hard links (refused by the file system), permission and time changes (taken as durable
at once), and a file whose name survived with some of its unsynced data (torn writes are the
framing's business, tested elsewhere).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

ROOT: Final = 1


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


Place = tuple[int, str]  # (parent directory id, name)


@dataclass(eq=False)
class Node:
    id: int
    kind: Kind
    mode: int
    target: str = ""  # of a symlink
    live_at: Place | None = None
    durable_at: Place | None = None
    data: bytes = b""  # a file's durable content: its bytes at its last sync
    entries: dict[str, int] = field(default_factory=dict)  # a directory's live entries
    durable_entries: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Node {self.id} {self.kind.value} live_at={self.live_at} durable_at={self.durable_at}>"


class DurabilityModel:
    """The live and durable trees of one file system (see the module docstring)."""

    def __init__(self, root_mode: int) -> None:
        self.nodes: dict[int, Node] = {ROOT: Node(ROOT, Kind.DIR, root_mode)}
        self._next_id = ROOT + 1

    def __repr__(self) -> str:
        durable = sum(1 for n in self.nodes.values() if n.durable_at is not None)
        return f"<DurabilityModel nodes={len(self.nodes)} durable={durable + 1}>"

    # -- the live tree ------------------------------------------------------------------------------

    def lookup(self, path: str) -> Node | None:
        """The live node at ``path`` ("/" is the root), or None."""
        node = self.nodes[ROOT]
        for part in path.split("/"):
            if not part:
                continue
            child = node.entries.get(part)
            if child is None:
                return None
            node = self.nodes[child]
        return node

    def add(self, parent: Node, name: str, kind: Kind, mode: int, target: str = "") -> Node:
        """A new node at ``parent/name`` (live only); an existing file there is returned instead."""
        existing = parent.entries.get(name)
        if existing is not None:
            return self.nodes[existing]
        node = Node(self._next_id, kind, mode, target=target, live_at=(parent.id, name))
        self._next_id += 1
        self.nodes[node.id] = node
        parent.entries[name] = node.id
        return node

    def remove(self, parent: Node, name: str) -> None:
        """unlink or rmdir: the name leaves the live tree (the durable one keeps it until a sync)."""
        node = self.nodes[parent.entries.pop(name)]
        node.live_at = None
        self._forget_if_unreachable(node)

    def rename(self, src: Node, src_name: str, dst: Node, dst_name: str) -> None:
        """Move ``src/src_name`` to ``dst/dst_name``, replacing what was there (live only)."""
        node = self.nodes[src.entries.pop(src_name)]
        displaced = dst.entries.get(dst_name)
        dst.entries[dst_name] = node.id
        node.live_at = (dst.id, dst_name)
        if displaced is not None and displaced != node.id:
            replaced = self.nodes[displaced]
            replaced.live_at = None
            self._forget_if_unreachable(replaced)

    def live_paths(self) -> Iterator[tuple[str, Node]]:
        """Every live node below the root with its path relative to the root, parents first."""
        yield from self._walk(ROOT, durable=False)

    # -- durability ---------------------------------------------------------------------------------

    def sync_file(self, node_id: int, data: bytes) -> None:
        """fsync/fdatasync: ``data`` (the file's bytes now) is what a cut keeps. Ignored for a node
        already forgotten (unlinked, its removal durable, still open somewhere)."""
        node = self.nodes.get(node_id)
        if node is not None and node.kind is Kind.FILE:
            node.data = data

    def sync_dir(self, directory: Node) -> None:
        """fsync of a directory: its durable entries become its live ones."""
        durable = directory.durable_entries
        for name, node_id in list(durable.items()):
            if directory.entries.get(name) != node_id:
                self._unplace(directory, name)
        for name, node_id in directory.entries.items():
            if durable.get(name) != node_id:
                self._place(self.nodes[node_id])

    def sync_all(self, read: Callable[[str], bytes]) -> None:
        """``sync``: the whole live tree becomes durable; ``read(path)`` gives a file's bytes now."""
        self.sync_dir(self.nodes[ROOT])
        for path, node in list(self.live_paths()):
            if node.kind is Kind.DIR:
                self.sync_dir(node)
            elif node.kind is Kind.FILE:
                node.data = read(path)

    def durable_paths(self) -> Iterator[tuple[str, Node]]:
        """Every node a cut now would keep, with its path relative to the root, parents first."""
        yield from self._walk(ROOT, durable=True)

    # -- internals ----------------------------------------------------------------------------------

    def _walk(self, dir_id: int, durable: bool, prefix: str = "") -> Iterator[tuple[str, Node]]:
        stack = [(dir_id, prefix)]
        seen = {dir_id}
        while stack:
            current, base = stack.pop()
            node = self.nodes[current]
            entries = node.durable_entries if durable else node.entries
            for name in sorted(entries):
                child = self.nodes[entries[name]]
                path = f"{base}{name}"
                yield path, child
                if child.kind is Kind.DIR and child.id not in seen:
                    seen.add(child.id)
                    stack.append((child.id, path + "/"))

    def _place(self, node: Node) -> None:
        """Make the node's live place its durable one, leaving its old durable place (a rename is
        atomic), and taking the place from whatever node held it durably."""
        assert node.live_at is not None
        parent_id, name = node.live_at
        if node.durable_at == node.live_at:
            return
        if node.durable_at is not None:
            old_parent, old_name = node.durable_at
            del self.nodes[old_parent].durable_entries[old_name]
            node.durable_at = None
        parent = self.nodes[parent_id]
        if name in parent.durable_entries:
            self._unplace(parent, name)
        parent.durable_entries[name] = node.id
        node.durable_at = (parent_id, name)

    def _unplace(self, directory: Node, name: str) -> None:
        """The durable entry ``directory/name`` goes. Its node, if it now lives elsewhere, was renamed
        there: that rename becomes durable with this removal. Otherwise it is gone."""
        node = self.nodes[directory.durable_entries.pop(name)]
        node.durable_at = None
        if node.live_at is not None and node.live_at != (directory.id, name):
            self._place(node)
        else:
            self._forget_if_unreachable(node)

    def _forget_if_unreachable(self, node: Node) -> None:
        """Drop a node neither tree can reach any more (with what only it reached, durably)."""
        if node.id == ROOT or node.live_at is not None or node.durable_at is not None:
            return
        del self.nodes[node.id]
        for name in list(node.durable_entries):
            self._unplace(node, name)
