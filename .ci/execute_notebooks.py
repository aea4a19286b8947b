"""Execute the derivation notebooks in place, so that they keep their outputs (figures, printed
checks, measured numbers) for readers on GitHub, in JupyterLab and on the docs site; and check,
in CI, that the committed outputs are all there and were made by the current `ala_paper/`.

    python .ci/execute_notebooks.py                   # run NOTEBOOKS in place, `#| slow` cells too
    python .ci/execute_notebooks.py --skip slow       # faster, for a draft: `--check` then fails
    python .ci/execute_notebooks.py nbs/00_losses.ipynb
    python .ci/execute_notebooks.py --check           # exit 1 if outputs are missing or stale

Each notebook runs in a fresh kernel of this interpreter with `nbs/` as working directory (as
`nbdev_test` does, but with IN_TEST unset: the notebook runs as a reader runs it), PNG figures,
no progress bars. Then `nbdev_clean` strips the volatile parts, and the notebook's metadata
`executed` records what made the outputs: sha256 of `ala_paper/*.py`, of the code cells and of
the outputs. `--check` recomputes all three and checks each cell that prints or shows something.
"""
import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["index.ipynb", "00_losses.ipynb", "01_models.ipynb", "02_data.ipynb", "02b_fixtures.ipynb",
             "02c_transforms.ipynb", "02d_synthetic.ipynb", "03_metrics.ipynb", "03c_recipe.ipynb",
             "03d_checkpoints.ipynb", "03e_batches.ipynb", "03f_engine.ipynb", "03g_cli.ipynb", "03h_board.ipynb",
             "04_train.ipynb", "04b_benchmarks.ipynb",
             "07_upstream.ipynb", "08_analysis.ipynb", "09_evaluate.ipynb", "09b_zoo.ipynb"]
KEY = "executed"   # notebook metadata key; settings.ini's allowed_metadata_keys keeps it
COMMAND = "python .ci/execute_notebooks.py"
DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.+?)\s*$", re.M)
MAX_IMAGE_BYTES, MAX_NOTEBOOK_OUTPUT_BYTES = 250_000, 2_000_000


def flags(source: str) -> set:
    "nbdev flags of a cell: `#| slow` -> {'slow'}; `#| eval: false` -> {'eval:false'}."
    return {m.split()[0] if ":" not in m else m.replace(" ", "").lower() for m in DIRECTIVE.findall(source)}


def skipped(source: str, skip) -> bool:
    "Is a code cell with this source left unexecuted? (`#| eval: false`, or one of the flags in `skip`)"
    return bool(flags(source) & ({"eval:false"} | set(skip)))


def module_sha(root: Path = ROOT) -> str:
    "sha256 over `ala_paper/**/*.py` (path and content, sorted)."
    h = hashlib.sha256()
    for p in sorted((root / "ala_paper").rglob("*.py")):
        if "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()


def _norm(x):
    "Outputs as text: lists of lines joined (nbformat stores strings either way), execution counts dropped."
    if isinstance(x, dict): return {k: _norm(v) for k, v in x.items() if k != "execution_count"}
    if isinstance(x, list): return "".join(x) if all(isinstance(s, str) for s in x) else [_norm(v) for v in x]
    return x


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def code_cells(nb: dict) -> list:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def record(nb: dict, root: Path = ROOT, skipped=()) -> dict:
    "What the outputs of `nb` were made from, as stored in its metadata."
    cells = code_cells(nb)
    return {"ala_paper_sha256": module_sha(root),
            "code_sha256": _sha([_norm(c["source"]) for c in cells]),
            "outputs_sha256": _sha([_norm(c.get("outputs", [])) for c in cells]),
            "skipped": sorted(skipped), "command": COMMAND}


_SHOWS = {"print", "display", "show", "show_doc"}


def _shows(source: str) -> tuple:
    """(prints or displays something, shows a matplotlib figure): a call at the top level (not in a def),
    or a bare value (not a call) as the last statement, which Jupyter displays."""
    src = "\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!")))
    try: tree = ast.parse(src)
    except SyntaxError: return False, False
    last = tree.body[-1] if tree.body else None
    value = isinstance(last, ast.Expr) and not isinstance(last.value, (ast.Call, ast.Await, ast.Constant)) \
        and not src.rstrip().endswith(";")
    calls = []
    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)): return
        if isinstance(node, ast.Call):
            f = node.func
            calls.append(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
            if isinstance(f, ast.Attribute) and f.attr == "show": calls.append("plt.show")
        for child in ast.iter_child_nodes(node): visit(child)
    visit(tree)
    return value or bool(_SHOWS & set(calls)), "plt.show" in calls


def problems(path: Path) -> list:
    "Why the committed outputs of notebook `path` (in `<project>/nbs/`) are missing or stale ([] if none)."
    nb, root = json.loads(path.read_text(encoding="utf-8")), path.resolve().parents[1]
    name, meta = path.name, nb.get("metadata", {}).get(KEY)
    if not meta: return [f"{name}: never executed by `{COMMAND}` (no '{KEY}' metadata)"]
    out, now = [], record(nb, root)
    if meta.get("ala_paper_sha256") != now["ala_paper_sha256"]:
        out.append(f"{name}: ala_paper/ changed after its outputs were made")
    if meta.get("code_sha256") != now["code_sha256"]:
        out.append(f"{name}: code cells changed after its outputs were made")
    if meta.get("outputs_sha256") != now["outputs_sha256"]:
        out.append(f"{name}: outputs were stripped or edited after execution")
    if meta.get("skipped"):
        out.append(f"{name}: executed with `--skip {' '.join(meta['skipped'])}`: those cells' outputs are missing")
    total = 0
    for i, c in enumerate(code_cells(nb)):
        outs, src = c.get("outputs", []), _norm(c["source"])
        where = f"{name}, code cell {i} ({src.strip().splitlines()[-1][:60] if src.strip() else ''!r})"
        if skipped(src, {"gpu"}): continue
        shows, plots = _shows(src)
        if shows and not outs: out.append(f"{where}: prints or shows something but has no output")
        if plots and not any("image/png" in o.get("data", {}) for o in outs):
            out.append(f"{where}: shows a figure but has no PNG output")
        for o in outs:
            size = len(json.dumps(o))
            total += size
            if o["output_type"] == "error": out.append(f"{where}: has an error output")
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {}): out.append(f"{where}: has a widget (progress bar?) output")
            if _norm(o.get("text", "")).count("\r") > 2: out.append(f"{where}: has progress-bar output (\\r lines)")
            if any(k.startswith("image/") and k != "image/png" for k in o.get("data", {})): out.append(f"{where}: has a non-PNG image")
            if size > MAX_IMAGE_BYTES: out.append(f"{where}: output of {size // 1000} kB (limit {MAX_IMAGE_BYTES // 1000} kB)")
    if total > MAX_NOTEBOOK_OUTPUT_BYTES: out.append(f"{name}: {total // 1000} kB of outputs (limit {MAX_NOTEBOOK_OUTPUT_BYTES // 1000} kB)")
    return out


SETUP = """\
%config InlineBackend.figure_formats = ['png']
%config InlineBackend.rc = {'figure.dpi': 100}
%matplotlib inline
import sys
assert sys.prefix == PREFIX, f"the kernel runs {sys.executable}, not this install's interpreter"
"""


def execute(path: Path, skip=(), timeout=None) -> None:
    "Run notebook `path` in place in a fresh kernel, clean it with nbdev_clean, record what made the outputs."
    import nbformat
    from nbclient import NotebookClient

    class Client(NotebookClient):
        async def async_execute_cell(self, cell, cell_index, **kw):
            if cell.cell_type == "code" and skipped(cell.source, skip):
                cell.outputs, cell.execution_count = [], None
                return cell
            return await super().async_execute_cell(cell, cell_index, **kw)

    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP.replace("PREFIX", repr(sys.prefix))))
    env = {k: v for k, v in os.environ.items() if k != "IN_TEST"}
    env.update(MPLBACKEND="module://matplotlib_inline.backend_inline", TQDM_DISABLE="1", PYDEVD_DISABLE_FILE_VALIDATION="1",
               PYTHONPATH=os.pathsep.join([str(path.resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]))
    Client(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute(env=env)
    nb.cells.pop(0)
    nbformat.write(nb, path)
    clean(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    left_out = {f for c in code_cells(raw) for f in flags(_norm(c["source"]))} & set(skip) - {"gpu"}
    raw["metadata"][KEY] = record(raw, path.resolve().parents[1], left_out)
    from execnb.nbio import dict2nb, write_nb   # nbdev_clean's writer, so that a second clean changes nothing
    write_nb(dict2nb(raw), path)
    clean(path)


def clean(path: Path) -> None:
    # the nbdev_clean beside this interpreter, so that `.venv/bin/python .ci/...` works without activating the venv
    beside = Path(sys.executable).with_name("nbdev_clean")
    exe = str(beside) if beside.exists() else "nbdev_clean"
    subprocess.run([exe, "--fname", str(path.resolve())], check=True, cwd=path.resolve().parent)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help=f"default: {' '.join(NOTEBOOKS)} in nbs/")
    ap.add_argument("--check", action="store_true", help="check the committed outputs instead of executing")
    ap.add_argument("--skip", action="append", default=[], metavar="FLAG", help="skip cells with this nbdev flag (e.g. slow); repeatable")
    ap.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    a = ap.parse_args()
    paths = a.notebooks or [ROOT / "nbs" / n for n in NOTEBOOKS]
    if a.check:
        errs = [e for p in paths for e in problems(p)]
        for e in errs: print("error:", e, file=sys.stderr)
        if errs: sys.exit(f"{len(errs)} problem(s): run `{COMMAND}` (and nbdev_export first if the module is stale), then commit the notebooks")
        print(f"outputs of {len(paths)} notebooks present and made by the current ala_paper/")
        return
    skip = set(a.skip)
    try:
        import torch
        if not torch.cuda.is_available(): skip.add("gpu")
    except ImportError: skip.add("gpu")
    for p in paths:
        print(f"executing {p}" + (f" (skipping {', '.join(sorted(skip))} cells)" if skip else ""), flush=True)
        execute(Path(p), sorted(skip), a.timeout)
    for readme in {Path(p).resolve().parents[1] / ".ci" / "make_readme.py" for p in paths if Path(p).name == "index.ipynb"}:
        if readme.exists(): subprocess.run([sys.executable, str(readme)], check=True)   # README.md shows index's outputs


if __name__ == "__main__":
    main()
