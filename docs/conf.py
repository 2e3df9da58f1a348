"""Sphinx configuration for the mrcz documentation.

Build the site and run every example::

    python -m sphinx -W -b html docs OUT/html
    python -m sphinx -W -b doctest docs OUT/doctest

The API pages use two small directives defined in ``_ext/mrczdoc.py``
(``api-objects`` and ``api-module``) that document only what the installed
package actually has, so the build stays warning-free while modules are being
added; a missing module shows as "(coming)".
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))

try:
    import mrcz
    release = mrcz.__version__
except Exception:  # pragma: no cover - the build then reports the failed imports
    release = "unknown"
version = ".".join(release.split(".")[:2])

project = "mrcz"
author = "the mrcz developers"
copyright = "the mrcz developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "mrczdoc",
]

exclude_patterns = ["_build", "_compat", "Thumbs.db", ".DS_Store"]
root_doc = "index"
language = "en"
pygments_style = "sphinx"

# -- autodoc / napoleon -------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options: dict = {}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

# -- doctest -------------------------------------------------------------------
# Only ``.. doctest::`` blocks in these pages are run (not bare ``>>>`` blocks
# that autodoc pulls in from docstrings), each group in a fresh temporary folder.
doctest_test_doctest_blocks = ""
doctest_global_setup = f"""
import os as _os, shutil as _shutil, sys as _sys, tempfile as _tempfile
_docs_dir = {HERE!r}
if _os.path.join(_docs_dir, "_ext") not in _sys.path:
    _sys.path.insert(0, _os.path.join(_docs_dir, "_ext"))
_docs_start_dir = _os.getcwd()
_docs_tmp_dir = _tempfile.mkdtemp(prefix="mrcz-docs-")
_os.chdir(_docs_tmp_dir)
_os.environ["MRCZ_NO_PROGRESS"] = "1"
import numpy as np
np.set_printoptions(precision=4, suppress=True)
"""
doctest_global_cleanup = """
_os.chdir(_docs_start_dir)
_shutil.rmtree(_docs_tmp_dir, ignore_errors=True)
"""

# -- HTML ------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"mrcz {release}"
html_theme_options = {
    "description": "MRC2014, MRCZ and Gatan DM files for cryo-EM archives",
    "fixed_sidebar": True,
    "page_width": "1200px",  # at 1280 px wide screens the body gets 980 px for code
    "body_max_width": "none",
}
html_css_files = ["custom.css"]
html_static_path = ["_static"] if os.path.isdir(os.path.join(HERE, "_static")) else []
html_last_updated_fmt = None
