"""The documentation site's sources: the API reference covers every public name, and the user
guide's pages are all in its table of contents. (``make docs``, which ``make test`` runs,
builds the site with warnings as errors: a broken cross-reference or docstring fails it.)"""

import importlib
import importlib.util
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def load_conf():
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)  # defines the generators; Sphinx's setup() would run them
    return conf


def test_the_api_reference_lists_every_public_name(tmp_path):
    conf = load_conf()
    conf.write_api_pages(tmp_path)
    for package in conf.PACKAGES:
        module = importlib.import_module(f"lvmkit.{package}")
        page = (tmp_path / f"{package}.rst").read_text()
        listed = set(re.findall(r"^   (\w+)$", page, re.M))  # the autosummary's entries
        linked = set(re.findall(rf"^- ``lvmkit\.{package}\.(\w+)``", page, re.M))
        assert listed | linked == set(module.__all__), package
        assert not listed & linked
    top = (tmp_path / "index.rst").read_text()
    import lvmkit

    for name in lvmkit.__all__:
        assert name == "core" or f"``lvmkit.{name}``" in top, name


def test_every_guide_page_is_in_a_table_of_contents():
    tables = (DOCS / "index.md").read_text() + (DOCS / "guide" / "index.md").read_text()
    pages = [p.relative_to(DOCS).with_suffix("").as_posix() for p in DOCS.rglob("*.md")]
    pages = [p for p in pages if not p.startswith(("_build", "api", "tutorials/")) and p != "index"]
    listed = [p for p in pages if f"\n{p}\n" in tables or f"\n{p.split('/')[-1]}\n" in tables]
    assert pages and listed == pages, set(pages) - set(listed)


def test_every_public_name_has_a_numpydoc_docstring():
    """Parameters for every public function and class that takes any, Returns for every
    function that returns something: what the API reference renders."""
    import inspect

    from numpydoc.docscrape import ClassDoc, FunctionDoc

    conf, lacking, seen = load_conf(), [], set()
    for package in conf.PACKAGES:
        module = importlib.import_module(f"lvmkit.{package}")
        for name in module.__all__:
            thing = getattr(module, name)
            if id(thing) in seen or not (inspect.isfunction(thing) or inspect.isclass(thing)):
                continue
            seen.add(id(thing))
            if not thing.__doc__:
                lacking.append(f"{package}.{name}: no docstring")
                continue
            own = ("__init__", "__dataclass_fields__")  # not a protocol's or nn.Module's (*args)
            takes = inspect.isfunction(thing) or any(k in vars(thing) for k in own)
            if getattr(thing, "_is_protocol", False):
                takes = False
            signature = inspect.signature(thing) if takes else None
            parameters = [p for p in signature.parameters if p != "self"] if takes else []
            doc = ClassDoc(thing) if inspect.isclass(thing) else FunctionDoc(thing)
            if parameters and not doc["Parameters"]:
                lacking.append(f"{package}.{name}: no Parameters")
            function = inspect.isfunction(thing)
            returns = signature.return_annotation if function else None
            if returns not in (None, "None", inspect.Signature.empty) and not doc["Returns"]:
                lacking.append(f"{package}.{name}: no Returns")
    assert not lacking, lacking
