"""The shape of the code: imports flow one way, modules stay small, light commands stay light, and every
config-group yaml matches its registry."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from etf_train.cli import config_dir
from etf_train.heads import HEADS

PACKAGE = Path(__file__).parents[1] / "etf_train"

# Lower layers never import higher ones; within a layer, only a package's own modules import each other.
LAYERS = [
    {"command", "errors", "heap", "tags"},
    {"interrupt", "options", "registry", "rundir", "search", "sweepdir", "view"},
    {"etf", "metrics", "parallel", "runlock", "sphere"},
    {"solver"},
    {"heads", "backbones", "data", "losses"},
    {"training"},
    {"compare", "posthoc"},
    {"cli"},  # it ends a sweep with etf-compare's summary
    {"__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: Path) -> str:
    """The top-level unit of etf_train a file belongs to: `data` for etf_train/data/loaders.py."""
    return module.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_units(module: Path) -> set[str]:
    """etf_train units that `module` imports, at module level or inside functions."""
    rel = module.relative_to(PACKAGE)
    units = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith("etf_train"):
                parts = node.module.split(".")[1:]
            elif node.level > 0:
                base = list(rel.parts[:-1])[: len(rel.parts) - node.level]
                parts = base + (node.module.split(".") if node.module else [a.name for a in node.names])
            else:
                continue
            units.add(parts[0] if parts else _top(module))
        elif isinstance(node, ast.Import):
            units |= {a.name.split(".")[1] for a in node.names if a.name.startswith("etf_train.")}
    return units


@pytest.mark.parametrize(
    "module",
    sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_imports_flow_one_way(module):
    me = _top(module)
    for unit in _imported_units(module) - {me}:
        assert LAYER[unit] < LAYER[me], (
            f"{module.relative_to(PACKAGE)} (layer {LAYER[me]}) imports {unit} (layer {LAYER[unit]})"
        )


def test_every_unit_has_a_layer():
    units = {_top(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units <= LAYER.keys(), units - LAYER.keys()


def test_no_module_is_over_350_lines():
    long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350
    }
    assert not long, long


def test_cli_startup_and_compare_do_not_import_torch():
    code = "import sys, etf_train.cli, etf_train.compare; print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_head_has_a_yaml_spelling_out_its_options():
    """configs/head/<name>.yaml lists exactly the head's options with their defaults; a preset (<name>_<variant>.yaml,
    e.g. learned_authors) names its head and sets only options that head has."""
    files = sorted((config_dir() / "head").glob("*.yaml"))
    assert {f.stem for f in files if f.stem in HEADS} == set(HEADS.names())
    for f in files:
        cfg = OmegaConf.to_container(OmegaConf.load(f))
        name = cfg.pop("name")
        params = inspect.signature(HEADS.get(name)).parameters
        if f.stem != name:
            assert f.stem.startswith(f"{name}_") and set(cfg) <= set(params), f.stem
            continue
        assert set(cfg) == set(params) - {"num_classes", "dim"}, f.stem
        for key, value in cfg.items():
            if key != "solver":
                assert value == params[key].default, (f.stem, key)


def test_training_imports_no_torchvision_or_timm_until_a_builder_needs_them():
    """torchvision and timm cost seconds at every start; UFM, digits and synthetic runs need neither."""
    code = (
        "import sys, etf_train.training, etf_train.data, etf_train.backbones, etf_train.losses; "
        "print(sorted(m for m in ('torchvision', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
