"""Sphinx configuration: the API reference from the docstrings, and the Markdown tutorials.

Build (warnings are errors, as ``tests/test_docs.py`` builds it)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

autodoc imports the installed package (``pip install -e ".[test]"`` or ``".[docs]"``), napoleon
reads its Google-style docstrings, and MyST renders the Markdown pages (``index.md``,
``tutorials/*.md``). No intersphinx: the build needs no network.
"""

from __future__ import annotations

from importlib.metadata import version as _version

project = "nanoxtal"
author = "nanoxtal developers"
copyright = "nanoxtal developers"
release = _version("nanoxtal")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# autodoc: the real package, imported (no mocked imports); documented members in source order,
# type hints written into the parameter descriptions rather than the signatures.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True

# napoleon: Google style only (the project's docstring convention, see pyproject's ruff section).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# MyST: anchors for headings down to ###, so Markdown pages can link to #sections.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"nanoxtal {release}"
