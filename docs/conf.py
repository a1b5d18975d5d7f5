"""Sphinx configuration of lvmkit's documentation: the user guide (MyST markdown), the API
reference generated from each package's ``__all__`` (autosummary + numpydoc), and the
tutorials rendered from their stored outputs (myst-nb, never executed here)."""

import importlib
import os
import shutil
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # importing torch for autodoc: no thread storm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ALONE = ("index", "install", "tutorials", "benchmarks", "development")  # pages without sections
PACKAGES = ["data", "nets", "distributions", "models", "inference", "diagnostics", "runs"]

project = "lvmkit"
author = "the lvmkit developers"
copyright = "2026, the lvmkit developers"
release = version = importlib.import_module("lvmkit").__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_nb",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = ["_templates"]  # a class page documents its own members, not nn.Module's
# every cross-reference must resolve (make docs fails otherwise), except into the libraries
# lvmkit builds on, which this site does not hold
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(torch|pyro|sklearn|numpy|arviz|matplotlib|nn)\b.*")]
html_theme = "pydata_sphinx_theme"
html_title = "lvmkit"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2,
                      "header_links_before_dropdown": 6}  # fmt: skip
# pages with no section to navigate: no empty left bar
html_sidebars = {page: [] for page in ALONE}

autosummary_generate = True
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # an override without a docstring says nothing new
numpydoc_show_class_members = False  # autodoc lists them once
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the stored outputs of a full-size run are the page
suppress_warnings = ["myst.header"]


def copy_tutorials(target: Path) -> None:
    """The notebooks in ../tutorials, as pages of the site (a copy: Sphinx reads its own tree)."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        shutil.copy(notebook, target / notebook.name)


def write_api_pages(target: Path) -> None:
    """<package>.rst per package in ``target``: its docstring and an autosummary of its
    ``__all__``; index.rst: the top-level names. A name two packages export is documented where
    its package comes first (its home) and linked from the other."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    home: dict[int, str] = {}
    for package in PACKAGES:
        name = f"lvmkit.{package}"
        module = importlib.import_module(name)
        own, elsewhere = [], []
        for item in sorted(module.__all__, key=str.lower):
            where = home.setdefault(id(getattr(module, item)), f"{name}.{item}")
            (own if where == f"{name}.{item}" else elsewhere).append((item, where))
        lines = [name, "=" * len(name), "", f".. automodule:: {name}", "   :no-members:", "",
                 f".. currentmodule:: {name}", "", ".. autosummary::", "   :toctree: generated",
                 "", *[f"   {item}" for item, _ in own], ""]  # fmt: skip
        if elsewhere:
            lines += ["Also here, documented at home:", ""]
            lines += [f"- ``{name}.{item}``: :py:obj:`{where}`" for item, where in elsewhere]
        (target / f"{package}.rst").write_text("\n".join(lines) + "\n")
    top = importlib.import_module("lvmkit")
    rows = []
    for item in sorted(top.__all__, key=str.lower):
        value = getattr(top, item)
        if item in PACKAGES:
            rows.append(f"- ``lvmkit.{item}``: :doc:`{item}`")
        elif item != "core":
            rows.append(f"- ``lvmkit.{item}``: :py:obj:`{home[id(value)]}`")
    index = ["API reference", "=============", "",
             "Every public name, by the package that holds it. ``import lvmkit`` gives the most",
             "used ones at the top level (loaded on first use):", "", *rows, "",
             ".. toctree::", "   :maxdepth: 1", "", *[f"   {p}" for p in PACKAGES], ""]  # fmt: skip
    (target / "index.rst").write_text("\n".join(index) + "\n")


def setup(app) -> None:
    """Before Sphinx reads the sources: the tutorials and the API pages, generated."""
    copy_tutorials(HERE / "tutorials")
    write_api_pages(HERE / "api")
