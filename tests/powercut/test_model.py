"""The durability model alone (pure): what a cut keeps after each sequence of operations and syncs."""

from __future__ import annotations

from tests.powercut.model import ROOT, DurabilityModel, Kind, Node


def durable(model: DurabilityModel) -> dict[str, bytes | None]:
    """The cut's view: path -> durable bytes (None for a directory)."""
    return {path: node.data if node.kind is Kind.FILE else None for path, node in model.durable_paths()}


def setup() -> tuple[DurabilityModel, Node, Node]:
    """A model with durable directories a/ and b/."""
    model = DurabilityModel(0o700)
    root = model.nodes[ROOT]
    a = model.add(root, "a", Kind.DIR, 0o700)
    b = model.add(root, "b", Kind.DIR, 0o700)
    model.sync_dir(root)
    return model, a, b


def test_a_new_file_needs_its_directory_synced_and_its_data_synced() -> None:
    model, a, _ = setup()
    f = model.add(a, "f", Kind.FILE, 0o600)
    model.sync_file(f.id, b"data")
    assert "a/f" not in durable(model)  # data synced, name not
    model.sync_dir(a)
    assert durable(model)["a/f"] == b"data"


def test_a_name_synced_without_its_data_comes_back_empty() -> None:
    model, a, _ = setup()
    model.add(a, "f", Kind.FILE, 0o600)
    model.sync_dir(a)
    assert durable(model)["a/f"] == b""


def test_only_the_bytes_of_the_last_sync_survive() -> None:
    model, a, _ = setup()
    f = model.add(a, "f", Kind.FILE, 0o600)
    model.sync_dir(a)
    model.sync_file(f.id, b"one")
    model.sync_file(f.id, b"one two")
    assert durable(model)["a/f"] == b"one two"


def test_a_rename_is_atomic_whichever_directory_is_synced() -> None:
    for synced in ("source", "destination"):
        model, a, b = setup()
        f = model.add(a, "f", Kind.FILE, 0o600)
        model.sync_file(f.id, b"x")
        model.sync_dir(a)
        model.rename(a, "f", b, "g")
        assert durable(model)["a/f"] == b"x"  # not yet
        model.sync_dir(a if synced == "source" else b)
        view = durable(model)
        assert "a/f" not in view, synced
        assert view["b/g"] == b"x", synced


def test_a_rename_over_a_file_keeps_the_old_content_until_the_directory_is_synced() -> None:
    model, a, _ = setup()
    old = model.add(a, "ledger", Kind.FILE, 0o600)
    model.sync_file(old.id, b"old")
    model.sync_dir(a)
    new = model.add(a, "ledger.tmp", Kind.FILE, 0o600)
    model.sync_file(new.id, b"new")
    model.rename(a, "ledger.tmp", a, "ledger")
    assert durable(model) == {"a": None, "b": None, "a/ledger": b"old"}
    model.sync_dir(a)
    assert durable(model) == {"a": None, "b": None, "a/ledger": b"new"}
    assert old.id not in model.nodes  # replaced and gone from both trees


def test_an_unlink_is_undone_by_a_cut_until_the_directory_is_synced() -> None:
    model, a, _ = setup()
    f = model.add(a, "f", Kind.FILE, 0o600)
    model.sync_file(f.id, b"x")
    model.sync_dir(a)
    model.remove(a, "f")
    assert model.lookup("/a/f") is None
    assert durable(model)["a/f"] == b"x"
    model.sync_dir(a)
    assert "a/f" not in durable(model)
    assert f.id not in model.nodes
    model.sync_file(f.id, b"late")  # an fsync through a descriptor still open: ignored


def test_a_file_created_and_removed_between_syncs_leaves_nothing() -> None:
    model, a, _ = setup()
    f = model.add(a, "tmp", Kind.FILE, 0o600)
    model.remove(a, "tmp")
    assert f.id not in model.nodes
    model.sync_dir(a)
    assert "a/tmp" not in durable(model)


def test_a_removed_directory_takes_its_durable_files_with_it_once_its_parent_is_synced() -> None:
    model, a, _ = setup()
    f = model.add(a, "f", Kind.FILE, 0o600)
    model.sync_dir(a)
    model.remove(a, "f")
    model.remove(model.nodes[ROOT], "a")
    assert "a/f" in durable(model)
    model.sync_dir(model.nodes[ROOT])
    assert durable(model) == {"b": None}
    assert a.id not in model.nodes
    assert f.id not in model.nodes


def test_a_file_moved_out_of_a_removed_directory_is_not_lost() -> None:
    model, a, b = setup()
    f = model.add(a, "f", Kind.FILE, 0o600)
    model.sync_file(f.id, b"x")
    model.sync_dir(a)
    model.rename(a, "f", b, "f")
    model.remove(model.nodes[ROOT], "a")
    model.sync_dir(model.nodes[ROOT])  # commits the rmdir, and with it the rename before it
    assert durable(model) == {"b": None, "b/f": b"x"}


def test_sync_all_makes_the_live_tree_durable() -> None:
    model = DurabilityModel(0o700)
    root = model.nodes[ROOT]
    d = model.add(root, "d", Kind.DIR, 0o700)
    model.add(d, "f", Kind.FILE, 0o600)
    model.add(root, "link", Kind.SYMLINK, 0o777, target="d/f")
    model.sync_all(lambda path: path.encode())
    assert durable(model) == {"d": None, "d/f": b"d/f", "link": None}
    link = model.lookup("/link")
    assert link is not None
    assert link.target == "d/f"
