"""Build the documentation site from the executed notebooks: Sphinx + MyST-NB, with MathJax served
from the site itself (no CDN) and an API reference from the docstrings. nbdev's own `nbdev_docs`
needs Quarto, which cannot be installed here.

    python .ci/build_docs.py                # -> _docs/site/index.html (ignored by git)
    python .ci/build_docs.py --out DIR

The notebooks are staged into `_docs/src/` first, as nbdev's docs would show them: `#| hide` cells
dropped, `#| echo: false` inputs and `#| output: false` outputs removed, directive lines stripped,
links to repository files other than notebooks and images pointed at GitHub. Sphinx's config is
`.ci/docs/conf.py`; warnings (a broken link, a missing image) fail the build.
"""
import argparse
import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.+?)\s*$")
LINK = re.compile(r'(\]\(|src=")([^)"\s]+)')
IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".svg"}
RUNS = ("train.ipynb", "tables.ipynb", "figures.ipynb")   # run notebooks; the rest derive the library


def settings() -> configparser.SectionProxy:
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]


def notebooks() -> list:
    "index first, then the numbered (library) notebooks, then the run notebooks."
    nbs = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith(("_", ".")))
    return ["index.ipynb"] + [n for n in nbs if n not in RUNS + ("index.ipynb",)] + [n for n in RUNS if n in nbs]


def relink(text: str, stage: Path, cfg) -> str:
    "Links to notebooks stay, images are copied into the stage, other repository files link to GitHub."
    def fix(m):
        prefix, target = m.groups()
        if re.match(r"^([a-z]+:|#|/)", target): return m.group(0)
        path, anchor = (target.split("#", 1) + [""])[:2]
        src = next((p for p in ((ROOT / "nbs" / path).resolve(), (ROOT / path).resolve()) if p.exists()), None)
        if src is None or ROOT not in src.parents: return m.group(0)        # Sphinx warns about it
        rel = src.relative_to(ROOT)
        if rel.parts[0] == "nbs" and src.suffix == ".ipynb": new = src.name
        elif src.suffix.lower() in IMAGES:
            new = Path(*rel.parts[1:]) if rel.parts[0] == "nbs" else rel
            (stage / new).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, stage / new)
            new = new.as_posix()
        else: new = f"{cfg['git_url']}/blob/{cfg['branch']}/{rel.as_posix()}"
        return prefix + new + (f"#{anchor}" if anchor else "")
    return LINK.sub(fix, text)


def stage_notebook(name: str, stage: Path, cfg) -> None:
    nb = json.loads((ROOT / "nbs" / name).read_text(encoding="utf-8"))
    cells = []
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        if c["cell_type"] == "markdown":
            c["source"] = relink(src, stage, cfg)
        elif c["cell_type"] == "code":
            lines = src.splitlines()
            flags = {re.sub(r"\s+", "", DIRECTIVE.match(l).group(1)) for l in lines if DIRECTIVE.match(l)}
            if "hide" in flags: continue
            c["source"] = "\n".join(l for l in lines if not DIRECTIVE.match(l)).strip("\n")
            tags = c.setdefault("metadata", {}).setdefault("tags", [])
            tags += ["remove-input"] * ("echo:false" in flags) + ["remove-output"] * ("output:false" in flags)
            if not c["source"] and not c.get("outputs"): continue                # `#| default_exp x` alone
        cells.append(c)
    nb["cells"] = cells
    if name == "index.ipynb":   # the site's navigation: every notebook, then the API reference
        lib = [n[:-6] for n in notebooks()[1:] if n not in RUNS]
        runs = [n[:-6] for n in RUNS if (ROOT / "nbs" / n).exists()]
        toc = "".join(f"```{{toctree}}\n:hidden:\n:caption: {cap}\n\n" + "\n".join(docs) + "\n```\n\n"
                      for cap, docs in (("Notebooks", lib), ("Runs", runs), ("Reference", ["api"])))
        nb["cells"].append({"cell_type": "markdown", "id": "site-toc", "metadata": {}, "source": toc})
    (stage / name).write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")


def api_page(stage: Path) -> None:
    "One section per exported module, linking to the notebook it comes from."
    lines = ["# API reference\n", "The exported library `ala_paper`, from the docstrings. Each module is derived, "
             "and each function checked, in the notebook named beside it.\n"]
    for name in notebooks():
        text = (ROOT / "nbs" / name).read_text(encoding="utf-8")
        m = re.search(r"#\s*\|\s*default_exp\s+([\w.]+)", text)
        if not m: continue
        mod = f"ala_paper.{m.group(1)}"
        lines += [f"## `{mod}`\n", f"Derived in [{name[:-6]}]({name}).\n",
                  f"```{{eval-rst}}\n.. automodule:: {mod}\n   :members:\n```\n"]
    (stage / "api.md").write_text("\n".join(lines), encoding="utf-8")


def build(out: Path) -> Path:
    cfg, stage = settings(), ROOT / "_docs" / "src"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in notebooks(): stage_notebook(name, stage, cfg)
    api_page(stage)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going", "-c", str(ROOT / ".ci" / "docs"),
           "-d", str(ROOT / "_docs" / "doctrees"), str(stage), str(out)]
    subprocess.run(cmd, check=True)
    return out / "index.html"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "_docs" / "site", help="where the HTML goes (default: _docs/site)")
    try: print(f"built {build(ap.parse_args().out.resolve())}")
    except subprocess.CalledProcessError as e: sys.exit(f"error: the docs build failed (exit {e.returncode}); see the warnings above")
