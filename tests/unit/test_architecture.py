"""The package layout is the architecture: no import cycles, and the layers import-linter checks.

``make test`` runs ``lint-imports`` (contracts in pyproject.toml); this test adds what a layers
contract does not see: a cycle between two modules of one package.
"""

from __future__ import annotations

import grimp


def test_no_module_imports_itself_through_another() -> None:
    graph = grimp.build_graph("certman")
    cycles = sorted(
        (module, imported)
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if module < imported and graph.chain_exists(importer=imported, imported=module)
    )
    assert cycles == []


def test_the_layers_contract_names_every_top_level_package() -> None:
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    contracts = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["name"] == "certman layers")["layers"]
    named = {part.strip() for layer in layers for part in layer.split("|")}
    graph = grimp.build_graph("certman")
    top = {m for m in graph.modules if m.count(".") == 1} - {"certman.contrib_data"}
    assert top <= named, f"not in any layer: {sorted(top - named)}"
