"""Sphinx configuration of the sklearn-parpredict documentation.

Built by ``make docs`` with warnings as errors. The build must work without
network access beyond PyPI, so no extension may fetch anything at build time
(no intersphinx inventories).
"""

import sklearn_parpredict

project = "sklearn-parpredict"
author = "the sklearn-parpredict developers"
copyright = "the sklearn-parpredict developers"
release = sklearn_parpredict.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinxarg.ext",
    "myst_parser",
]

# MyST parses CHANGELOG.md, which the changelog page includes so that the
# changelog has one source; the pages themselves are reStructuredText.
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
templates_path = ["_templates"]
root_doc = "index"

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": True}
# The signatures already say it; type hints in the text would repeat the
# numpydoc "Parameters" section.
autodoc_typehints = "none"

# The class template lists the methods already; numpydoc would list them a
# second time.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Check the public docstrings against the numpydoc format at build time, so
# that a malformed section fails `make docs`. Left out: the sections that
# not every method needs (extended summary, examples, see also), RT02 because
# the docstrings name their return values as scikit-learn's do, and GL02
# because the data constants are documented with ``#:`` comments.
numpydoc_validation_checks = {"all", "ES01", "EX01", "SA01", "RT02", "GL02"}
# Parameter types stay plain text: without intersphinx, links to numpy's or
# scikit-learn's types could not resolve.
numpydoc_xref_param_type = False

# Option names such as ``--trust-pickle`` appear in plain text (the command's
# help), and quoted values such as ``"auto"`` in the docstrings' types: keep
# them as typed rather than turning them into dashes and curly quotes.
smartquotes = False
# The page's table of contents names methods without their class.
toc_object_entries_show_parents = "hide"

# Headings of the included CHANGELOG.md become anchors, so that links to a
# release work.
myst_heading_anchors = 2

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn-parpredict {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# Only the API reference has pages below it to list in the left sidebar.
html_sidebars = {
    page: [] for page in ("index", "quick_start", "user_guide", "cli", "changelog")
}
html_static_path: list[str] = []
html_show_sourcelink = False


def _skip_metadata_requests(app, what, name, obj, skip, options):
    """Leave out the ``set_*_request`` and ``get_metadata_routing`` methods
    that scikit-learn's base classes generate: their docstrings point into
    scikit-learn's own documentation, and they behave as everywhere else."""
    if getattr(obj, "__module__", None) == "sklearn.utils._metadata_requests":
        return True
    # No opinion otherwise: returning ``skip`` would override autosummary's
    # own choice, which leaves out private members.
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_requests)
