"""Render nbs/index.ipynb into README.md with nbconvert (Quarto, which nbdev_readme needs,
cannot be installed on machines without internet access).

    python .ci/make_readme.py          # write README.md
    python .ci/make_readme.py --check  # exit 1 if README.md is not what index.ipynb gives
"""
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter
from nbconvert.preprocessors import Preprocessor

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.*)$")


class NbdevDirectives(Preprocessor):
    """Drop `#| hide` cells, drop outputs of `#| echo: false`-style cells' sources, strip
    directive lines from what is shown."""

    def preprocess(self, nb, resources):
        cells = []
        for cell in nb.cells:
            lines = cell.source.splitlines()
            flags = [DIRECTIVE.match(l).group(1).strip() for l in lines if DIRECTIVE.match(l)]
            if cell.cell_type == "code" and any(f in ("hide", "exporti") or f.startswith("default_exp") for f in flags):
                continue
            if cell.cell_type == "code":
                cell.source = "\n".join(l for l in lines if not DIRECTIVE.match(l)).strip("\n")
                if "echo: false" in flags:
                    cell.source = ""
            cells.append(cell)
        nb.cells = cells
        return nb, resources


def render() -> str:
    nb = nbformat.read(ROOT / "nbs" / "index.ipynb", as_version=4)
    exporter = MarkdownExporter()
    exporter.register_preprocessor(NbdevDirectives(), enabled=True)
    body, _ = exporter.from_notebook_node(nb)
    header = "<!-- Generated from nbs/index.ipynb by .ci/make_readme.py: edit the notebook, not this file. -->\n\n"
    body = re.sub(r"\]\(\.\./", "](", body)   # links relative to nbs/ become relative to the root
    body = re.sub(r"\n```[\w-]*\n\s*```\n", "\n", body)   # the empty code block of each `#| echo: false` cell
    return header + re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"


if __name__ == "__main__":
    text, readme = render(), ROOT / "README.md"
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            sys.exit("error: README.md differs from nbs/index.ipynb; run `python .ci/make_readme.py` and commit")
        print("README.md matches nbs/index.ipynb")
    else:
        readme.write_text(text, encoding="utf-8")
        print(f"wrote {readme}")
