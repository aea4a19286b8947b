"""Build the documentation site from the executed notebooks: Sphinx + MyST-NB, with MathJax served
from the site itself (no CDN) and an API reference from the docstrings. nbdev's own `nbdev_docs`
needs Quarto, which cannot be installed here.

    python .ci/build_docs.py                # -> _docs/site/index.html (ignored by git)
    python .ci/build_docs.py --out DIR
    python .ci/build_docs.py --skip-runs    # a quick draft: the Runs pages without outputs

The run notebooks (`train`, `tables`, `figures`) store no outputs: the build executes them with papermill,
with their default parameters, on the committed runs in `figures/runs/` (about a minute on 2 cores; `train`
trains its default model, ALA Loss on `synthetic-lt`, for 30 epochs), writing into `_docs/runs/` rather
than `figures/`. Their pages show that execution's outputs.

The notebooks are staged into `_docs/src/` first, as nbdev's docs would show them: `#| hide` cells
dropped, `#| echo: false` inputs and `#| output: false` outputs removed, directive lines stripped,
links to repository files other than notebooks and images pointed at GitHub. Sphinx's config is
`.ci/docs/conf.py`; warnings (a broken link, a missing image) fail the build.
"""
import argparse
import ast
import configparser
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                       # the API entries document this checkout's ala_paper
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


def run_notebook(name: str, scratch: Path) -> Path:
    "Execute run notebook `name` with papermill (cwd nbs/, as a reader runs it), writing its files under `scratch`."
    import papermill as pm
    out = scratch / name[:-6]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rel = lambda p: os.path.relpath(p, ROOT / "nbs")                       # paths as the notebook prints them
    params = {"out_dir": rel(out)} | ({} if name == "train.ipynb" else {"runs_dir": rel(ROOT / "figures" / "runs")})
    executed = scratch / name
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "TQDM_DISABLE": "1",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}      # figures inline even where CI sets Agg
    saved = {k: os.environ.get(k) for k in [*env, "IN_TEST"]}
    os.environ.update(env); os.environ.pop("IN_TEST", None)                # the kernel inherits these
    t0 = time.time()
    try: pm.execute_notebook(str(ROOT / "nbs" / name), str(executed), parameters=params, kernel_name="python3",
                             cwd=str(ROOT / "nbs"), progress_bar=False, log_output=False)
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    print(f"executed nbs/{name} in {time.time() - t0:.0f} s ({', '.join(f'{k}={v}' for k, v in params.items())})", flush=True)
    return executed


def merge_streams(outputs: list) -> list:
    "Adjacent stream outputs of one stream as one block; a table or figure between two prints stays between them."
    out = []
    for o in outputs:
        if o.get("output_type") == "stream" and out and out[-1].get("output_type") == "stream" and out[-1]["name"] == o["name"]:
            join = lambda t: "".join(t) if isinstance(t, list) else t
            out[-1] = {**out[-1], "text": join(out[-1]["text"]) + join(o["text"])}
        else: out.append(o)
    return out


def stage_notebook(name: str, stage: Path, cfg, src: Path = None, targets: dict = None, sha: str = "main") -> None:
    """Stage notebook `name` (from nbs/, or its executed copy `src`) as the site shows it; as nbdev's docs do, an
    `#| export` cell's source goes behind a fold, followed by an API entry for each class and function it defines."""
    nb = json.loads((src or ROOT / "nbs" / name).read_text(encoding="utf-8"))
    mod, public = exported(name)
    cells = []
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        if c["cell_type"] == "markdown":
            c["source"] = link_names(relink(src, stage, cfg), targets or {})
        elif c["cell_type"] == "code":
            lines = src.splitlines()
            flags = {re.sub(r"\s+", "", DIRECTIVE.match(l).group(1)) for l in lines if DIRECTIVE.match(l)}
            if "hide" in flags: continue
            if mod and "export" in flags:
                c.setdefault("metadata", {}).setdefault("tags", []).append("hide-input")
                entries = [entry(mod, n, cfg, sha) for n in code_names(src) if n in public]
                if entries:
                    c["source"] = "\n".join(l for l in lines if not DIRECTIVE.match(l)).strip("\n")
                    cells += [c, {"cell_type": "markdown", "id": f"api-{c.get('id', len(cells))}", "metadata": {},
                                  "source": "\n\n".join(entries)}]
                    continue
            c["source"] = "\n".join(l for l in lines if not DIRECTIVE.match(l)).strip("\n")
            tags = c.setdefault("metadata", {}).setdefault("tags", [])
            if "injected-parameters" in tags:                                 # papermill's, when the build ran it
                cells.append({"cell_type": "markdown", "id": "site-run", "metadata": {}, "source":
                              "*On this site: executed by the docs build (`.ci/build_docs.py`), with the defaults above "
                              "and these parameters, on the runs committed in `figures/runs/`:*"})
            tags += ["remove-input"] * ("echo:false" in flags) + ["remove-output"] * ("output:false" in flags)
            if not c["source"] and not c.get("outputs"): continue                # `#| default_exp x` alone
            c["outputs"] = merge_streams(c.get("outputs", []))
        cells.append(c)
    nb["cells"] = cells
    if name in RUNS:   # their tables are wide: the whole width, without the "on this page" column (a heading or two)
        nb["metadata"]["html_theme.sidebar_secondary.remove"] = True
    if name == "index.ipynb":   # the site's navigation: every notebook, then the API reference
        lib = [n[:-6] for n in notebooks()[1:] if n not in RUNS]
        runs = [n[:-6] for n in RUNS if (ROOT / "nbs" / n).exists()]
        toc = "".join(f"```{{toctree}}\n:hidden:\n:caption: {cap}\n\n" + "\n".join(docs) + "\n```\n\n"
                      for cap, docs in (("Notebooks", lib), ("Runs", runs), ("Reference", ["api"])))
        nb["cells"].append({"cell_type": "markdown", "id": "site-toc", "metadata": {}, "source": toc})
    (stage / name).write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")


def exported(name: str) -> tuple:
    "(module name, public names of `ala_paper.<module>` in definition order) of notebook `name`, or (None, [])."
    text = (ROOT / "nbs" / name).read_text(encoding="utf-8")
    m = re.search(r"#\s*\|\s*default_exp\s+([\w.]+)", text)
    if not m: return None, []
    mod = importlib.import_module(f"ala_paper.{m.group(1)}")
    names = [n for n, v in vars(mod).items() if not n.startswith("_") and getattr(v, "__module__", None) == mod.__name__
             and (inspect.isfunction(v) or inspect.isclass(v)) and n in getattr(mod, "__all__", [n])]
    return mod.__name__, names


def commit() -> str:
    "The commit the source links point at: HEAD of this checkout (the branch name outside git)."
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or settings()["branch"]


def _anno(a) -> str:
    if a is inspect.Parameter.empty: return ""
    return f"`{a if isinstance(a, str) else inspect.formatannotation(a)}`"


def _default(d) -> str:
    if d is inspect.Parameter.empty: return ""
    return f"`{d!r}`" if len(repr(d)) < 60 else f"`{type(d).__name__}`"


def params_table(obj) -> str:
    "nbdev's show_doc table: each argument's type, default and the comment written beside it (fastcore's docments)."
    from fastcore.docments import docments
    try: doc = docments(obj, full=True)
    except (TypeError, ValueError, OSError, SyntaxError): return ""
    rows = [(k, v) for k, v in doc.items() if k not in ("self", "cls")]
    if not any(k != "return" for k, _ in rows): return ""
    cell = lambda t: (t or "").replace("|", "\\|").replace("\n", " ")
    details = any(v["docment"] for _, v in rows)                       # the Details column only where comments exist
    lines = ["| | Type | Default |" + (" Details |" if details else ""), "|---|---|---|" + ("---|" if details else "")]
    for k, v in rows:
        star = {inspect.Parameter.VAR_POSITIONAL: "\\*", inspect.Parameter.VAR_KEYWORD: "\\*\\*"}.get(v.get("kind"), "")
        if k == "return" and v["anno"] is inspect.Parameter.empty and not v["docment"]: continue
        row = ["**Returns**", _anno(v["anno"]), ""] if k == "return" else [star + k, _anno(v["anno"]), _default(v["default"])]
        lines.append("| " + " | ".join(map(cell, row + [v["docment"]] * details)) + " |")
    return "\n".join(lines)


class _Text(str):
    "An annotation kept as text (`from __future__ import annotations`), shown without quotes."
    def __repr__(self): return str(self)


def _signature(obj, method: bool = False) -> str:
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return "()"
    bare = lambda a: _Text(a) if isinstance(a, str) else a
    ps = [p.replace(annotation=bare(p.annotation)) for p in sig.parameters.values()]
    if method and ps and ps[0].name in ("self", "cls"): ps = ps[1:]
    return str(sig.replace(parameters=ps, return_annotation=bare(sig.return_annotation))).replace("\n", " ")


def own_doc(obj) -> str:
    "The docstring written on `obj` itself: not one inherited (torch's `forward`), not a dataclass's generated signature."
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    return "" if doc.startswith(f"{getattr(obj, '__name__', '')}(") else doc


def entry(mod: str, name: str, cfg, sha: str, fence: str = "````") -> str:
    "An API entry where `name` is defined: signature, docstring, parameter table, link to the source at the commit."
    module = importlib.import_module(mod)
    obj = getattr(module, name)
    kind = "class" if inspect.isclass(obj) else "function"
    doc = own_doc(obj)
    try:
        lines, start = inspect.getsourcelines(obj)
        src = Path(inspect.getsourcefile(obj)).resolve().relative_to(ROOT).as_posix()
        link = f"[{src}, lines {start}-{start + len(lines) - 1}]({cfg['git_url']}/blob/{sha}/{src}#L{start}-L{start + len(lines) - 1}) (GitHub, {sha[:7]})"
    except (OSError, TypeError, ValueError): link = ""
    body = [f"{fence}{{py:{kind}}} {name}{_signature(obj)}", f":module: {mod}", "", doc, "", params_table(obj), "", link]
    if kind == "class":   # its public methods, defined in the class itself
        for m, f in vars(obj).items():
            if m.startswith("_") or not callable(f) and not isinstance(f, (staticmethod, classmethod)): continue
            f = getattr(obj, m)
            body += ["", f"```{{py:{'staticmethod' if isinstance(vars(obj)[m], staticmethod) else 'method'}}} {m}{_signature(f, True)}",
                     "", own_doc(f), "```"]
    return "\n".join(body + [fence])


def code_names(source: str) -> list:
    "The classes and functions a code cell defines at its top level."
    try: tree = ast.parse("\n".join(l for l in source.splitlines() if not DIRECTIVE.match(l)))
    except SyntaxError: return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


CODE_SPAN = re.compile(r"(?<![`\[])`([A-Za-z_][\w.]*?)(\(\))?`(?!`)")


def link_names(text: str, targets: dict) -> str:
    "Names of the API in backticks, outside code blocks and headings, become links to their entries (nbdev's doclinks)."
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")): fenced = not fenced
        elif not fenced and not line.lstrip().startswith("#"):
            line = CODE_SPAN.sub(lambda m: f"{{py:obj}}`{m.group(1)}{m.group(2) or ''} <{targets[m.group(1)]}>`"
                                 if m.group(1) in targets else m.group(0), line)
        out.append(line)
    return "\n".join(out)


def api_targets() -> dict:
    "Name -> full name for every public name of the library; `module.name` and `ala_paper.module.name` too."
    targets, seen = {}, {}
    for nb in notebooks():
        mod, names = exported(nb)
        for n in names or []:
            full = f"{mod}.{n}"
            targets[full] = targets[full.split(".", 1)[1]] = full
            seen.setdefault(n, []).append(full)
    targets.update({n: fulls[0] for n, fulls in seen.items() if len(fulls) == 1})   # a short name only when unambiguous
    return targets


def api_page(stage: Path) -> None:
    "The index of the API: per module, each name with its docstring's first line, linking to its entry in the notebook."
    lines = ["# API reference\n", "The exported library `ala_paper`: every public function and class, linking to its entry (signature, "
             "parameters, source) in the notebook that derives and checks it.\n"]
    for name in notebooks():
        mod, names = exported(name)
        if not mod: continue
        module = importlib.import_module(mod)
        lines += [f"## `{mod}`\n", f"{(module.__doc__ or '').strip()} Derived in [{name[:-6]}]({name}).\n",
                  "| name | what it is |", "|---|---|"]
        for n in names:
            first = own_doc(getattr(module, n)).strip().split("\n\n")[0].replace("\n", " ").replace("|", "\\|")
            lines.append(f"| {{py:obj}}`{n} <{mod}.{n}>` | {first} |")
        lines.append("")
    (stage / "api.md").write_text("\n".join(lines), encoding="utf-8")


def build(out: Path, runs: bool = True) -> Path:
    cfg, stage, scratch = settings(), ROOT / "_docs" / "src", ROOT / "_docs" / "runs"
    for old in (stage, ROOT / "_docs" / "doctrees"): shutil.rmtree(old, ignore_errors=True)   # no stale objects
    stage.mkdir(parents=True)
    targets, sha = api_targets(), commit()
    for name in notebooks():
        ran = run_notebook(name, scratch) if runs and name in RUNS else None
        stage_notebook(name, stage, cfg, ran, targets, sha)
    api_page(stage)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going", "-c", str(ROOT / ".ci" / "docs"),
           "-d", str(ROOT / "_docs" / "doctrees"), str(stage), str(out)]
    subprocess.run(cmd, check=True)
    return out / "index.html"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "_docs" / "site", help="where the HTML goes (default: _docs/site)")
    ap.add_argument("--skip-runs", action="store_true", help="do not execute the run notebooks (their pages show no output)")
    a = ap.parse_args()
    try: print(f"built {build(a.out.resolve(), runs=not a.skip_runs)}")
    except subprocess.CalledProcessError as e: sys.exit(f"error: the docs build failed (exit {e.returncode}); see the warnings above")
    except Exception as e:
        if type(e).__name__ != "PapermillExecutionError": raise
        sys.exit(f"error: a run notebook failed in the docs build: {e.ename}: {e.evalue}; run it with papermill to see where")
