# Sphinx configuration of the documentation site; build it with `python .ci/build_docs.py`, which
# stages the notebooks into _docs/src/ first.
import configparser
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))                      # document this checkout's ala_paper
cfg = configparser.ConfigParser(delimiters=["="])
cfg.read(ROOT / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

project, author, release = cfg["title"], cfg["author"], cfg["version"]
copyright = cfg["copyright"]
html_title = project
html_baseurl = cfg["doc_host"] + cfg["doc_baseurl"] + "/"

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.viewcode",
              "sphinx-mathjax-offline"]   # MathJax 3 copied into the site: equations render offline
nb_execution_mode = "off"                 # show the committed outputs (.ci/execute_notebooks.py makes them)
nb_merge_streams = False                 # build_docs.py merges adjacent prints, keeping their order with figures
nb_render_markdown_format = "myst"    # markdown outputs (the results tables) with tables, maths, links
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
python_maximum_signature_line_length = 80   # a long signature: one parameter per line, not cut off
toc_object_entries_show_parents = "hide"    # "on this page" lists `forward`, not `ala_paper.losses.ALALoss.forward`
default_role = "code"                     # docstrings write `name` for code, as markdown does
autodoc_default_options = {"members": True}
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False       # not torch's nn.Module.forward docstring on every loss
exclude_patterns = ["**.ipynb_checkpoints"]

html_theme = "sphinx_book_theme"
html_theme_options = {"repository_url": cfg["git_url"], "repository_branch": cfg["branch"], "path_to_docs": "nbs",
                      "use_repository_button": True, "show_toc_level": 2}
html_last_updated_fmt = None
html_static_path = [str(Path(__file__).parent / "_static")]
html_css_files = ["site.css"]            # a wider column; long code lines wrap (tests/test_docs.py checks)
