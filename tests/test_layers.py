"""The package's structure: no import cycles (function-level imports counted), no private
names imported across packages, no import from a higher layer (tools/import_graph.py)."""

from tools import import_graph


def test_the_import_graph_has_no_cycle():
    mods = import_graph.modules()
    assert import_graph.cycles(import_graph.graph(mods)) == []


def test_no_private_name_is_imported_across_packages():
    assert import_graph.private_imports(import_graph.modules()) == []


def test_no_module_imports_from_a_layer_above_it():
    assert import_graph.layer_violations(import_graph.modules()) == []


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks can fail: a two-module cycle, through a function-level import, and a
    low module importing the trainer."""
    pkg = tmp_path / "fastadv"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from .train import loop\n")
    (pkg / "train" / "loop.py").write_text("from .. import errors\nfrom ..errors import _x\n")
    monkeypatch.setattr(import_graph, "ROOT", tmp_path)
    mods = import_graph.modules()
    assert import_graph.cycles(import_graph.graph(mods)) == [
        ["fastadv.errors", "fastadv.train.loop"]]
    assert import_graph.layer_violations(mods) == [
        "fastadv.errors imports fastadv.train.loop, a layer above it"]
    assert import_graph.private_imports(mods) == [
        "fastadv.train.loop imports fastadv.errors._x"]
