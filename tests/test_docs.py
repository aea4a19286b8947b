"""The executed notebooks and the documentation site: `.ci/execute_notebooks.py` records what made a
notebook's outputs and its `--check` fails when they are stripped or stale; the site built by
`.ci/build_docs.py` renders its equations and loads its figures in headless Chromium, offline."""
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
import build_docs  # noqa: E402
import execute_notebooks as ex  # noqa: E402

TOY = {"cells": [
    {"cell_type": "markdown", "id": "a0", "metadata": {}, "source": "# Toy\n\n$$e^{i\\pi}+1=0$$"},
    {"cell_type": "code", "id": "a1", "metadata": {}, "execution_count": None, "outputs": [],
     "source": "#| export\ndef twice(x): return 2 * x"},
    {"cell_type": "code", "id": "a2", "metadata": {}, "execution_count": None, "outputs": [],
     "source": "import matplotlib.pyplot as plt\nfrom toy import VALUE\nprint('twice', twice(VALUE))\nplt.plot([0, 1]); plt.show()"},
    {"cell_type": "code", "id": "a3", "metadata": {}, "execution_count": None, "outputs": [],
     "source": "#| slow\nprint('measured', 42)"},
    {"cell_type": "code", "id": "a4", "metadata": {}, "execution_count": None, "outputs": [],
     "source": "r = {'top1': twice(VALUE)}\nr['top1']"}],
    "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    "A project with the real settings.ini, a one-file `ala_paper/` and one notebook, executed by the real command."
    root = tmp_path_factory.mktemp("proj")
    shutil.copy(ROOT / "settings.ini", root)
    (root / "ala_paper").mkdir(); (root / "nbs").mkdir()
    (root / "ala_paper" / "toy.py").write_text("VALUE = 21\n")
    (root / "nbs" / "toy.ipynb").write_text(json.dumps(TOY))
    env = {**os.environ, "PYTHONPATH": str(root / "ala_paper")}
    subprocess.run([sys.executable, str(ROOT / ".ci" / "execute_notebooks.py"), "nbs/toy.ipynb"], cwd=root, env=env, check=True)
    return root


def fresh(toy, tmp_path):
    "A copy of the executed toy project to damage."
    shutil.copytree(toy, tmp_path / "p")
    return tmp_path / "p", tmp_path / "p" / "nbs" / "toy.ipynb"


def test_executed_outputs_pass_and_survive_nbdev_clean(toy, tmp_path):
    root, nb = fresh(toy, tmp_path)
    assert ex.problems(nb) == []
    cells = ex.code_cells(json.loads(nb.read_text()))
    assert "twice 42" in json.dumps(cells[1]["outputs"]) and any("image/png" in o.get("data", {}) for o in cells[1]["outputs"])
    assert "measured 42" in json.dumps(cells[2]["outputs"])          # slow cells run by default
    assert ex._norm(cells[3]["outputs"][0]["data"]["text/plain"]) == "42"   # a bare value is displayed
    before = nb.read_bytes()
    subprocess.run(["nbdev_clean", "--fname", str(nb)], cwd=root, check=True)
    assert nb.read_bytes() == before                                 # clean-stable, metadata kept
    assert '"execution_count": null' in before.decode() and "iopub" not in before.decode()


def test_check_fails_on_stripped_outputs(toy, tmp_path):
    root, nb = fresh(toy, tmp_path)
    subprocess.run(["nbdev_clean", "--clear_all", "--fname", str(nb)], cwd=root, check=True)
    errs = "\n".join(ex.problems(nb))
    assert "outputs were stripped" in errs and "prints or shows something but has no output" in errs
    assert "shows a figure but has no PNG output" in errs and "code cell 3 (\"r['top1']\")" in errs


def test_check_fails_on_one_missing_figure(toy, tmp_path):
    root, nb = fresh(toy, tmp_path)
    d = json.loads(nb.read_text())
    for c in ex.code_cells(d): c["outputs"] = [o for o in c["outputs"] if "image/png" not in o.get("data", {})]
    nb.write_text(json.dumps(d))
    errs = "\n".join(ex.problems(nb))
    assert "shows a figure but has no PNG output" in errs and "outputs were stripped or edited" in errs


def test_check_fails_on_a_hand_edited_number(toy, tmp_path):
    root, nb = fresh(toy, tmp_path)
    nb.write_text(nb.read_text().replace("twice 42", "twice 41"))
    assert ex.problems(nb) == ["toy.ipynb: outputs were stripped or edited after execution"]


def test_check_fails_when_module_or_code_changed(toy, tmp_path):
    root, nb = fresh(toy, tmp_path)
    (root / "ala_paper" / "toy.py").write_text("VALUE = 22\n")
    assert ex.problems(nb) == ["toy.ipynb: ala_paper/ changed after its outputs were made"]
    root, nb = fresh(toy, tmp_path / "2")
    nb.write_text(nb.read_text().replace("2 * x", "3 * x"))
    assert ex.problems(nb) == ["toy.ipynb: code cells changed after its outputs were made"]


def test_check_fails_when_slow_cells_skipped(toy, tmp_path):
    root, nb = fresh(toy, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(root / "ala_paper")}
    subprocess.run([sys.executable, str(ROOT / ".ci" / "execute_notebooks.py"), "--skip", "slow", "nbs/toy.ipynb"],
                   cwd=root, env=env, check=True)
    errs = "\n".join(ex.problems(nb))
    assert "executed with `--skip slow`" in errs and "print('measured', 42)" in errs


def test_committed_notebooks_have_current_outputs():
    "What CI's step checks too: every derivation notebook executed, by the current ala_paper/."
    errs = [e for n in ex.NOTEBOOKS for e in ex.problems(ROOT / "nbs" / n)]
    assert not errs, f"run `{ex.COMMAND}`:\n" + "\n".join(errs)


def test_papermill_kernel_is_this_install():
    "The `python3` kernel that papermill and the executor start is this interpreter (jupyter_client maps 'python')."
    from jupyter_client.kernelspec import KernelSpecManager
    argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    assert argv0 in {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"} or \
        Path(argv0).resolve() == Path(sys.executable).resolve(), f"python3 kernel runs {argv0}, not {sys.executable}"


# --- the site in a browser -------------------------------------------------------------------

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class Chromium:
    "Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4): no driver, no npm."
    def __init__(self, profile: Path):
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()
        def fds():   # the pipe's ends become fds 3 (Chromium reads) and 4 (Chromium writes), inheritable
            a, b = os.dup(to_chrome), os.dup(from_chrome)
            os.dup2(a, 3); os.dup2(b, 4)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, close_fds=False, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome); os.close(from_chrome)
        self._buf, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Network.enable", session=True)

    def call(self, method, session=False, timeout=60, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": self.session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 16)
                if not chunk: raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply: raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)
        raise TimeoutError(method)

    def evaluate(self, js: str):
        r = self.call("Runtime.evaluate", session=True, expression=js, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r: raise RuntimeError(r["exceptionDetails"])
        return r["result"]["value"]

    def open(self, url: str) -> dict:
        "Load `url`, wait for the load event and for MathJax to finish, return what the page shows."
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        return json.loads(self.evaluate(PAGE_STATE))

    def failed_requests(self) -> list:
        ev = [e for e in self.events if e.get("method") in ("Network.loadingFailed", "Network.responseReceived", "Network.requestWillBeSent")]
        url = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in ev if e["method"] == "Network.requestWillBeSent"}
        bad = [f"{e['params'].get('errorText')} {url.get(e['params']['requestId'])}" for e in ev if e["method"] == "Network.loadingFailed"]
        bad += [f"HTTP {e['params']['response']['status']} {e['params']['response']['url']}" for e in ev
                if e["method"] == "Network.responseReceived" and e["params"]["response"]["status"] >= 400
                and not e["params"]["response"]["url"].endswith("/favicon.ico")]   # asked for by the browser itself
        bad += [f"off-site request {e['params']['request']['url']}" for e in ev if e["method"] == "Network.requestWillBeSent"
                and not e["params"]["request"]["url"].startswith(("http://127.0.0.1", "data:", "about:"))]
        return bad

    def close(self):
        try: self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError): pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: os.killpg(self.proc.pid, 9); self.proc.wait()
        os.close(self._w); os.close(self._r)


PAGE_STATE = r"""
(async () => {
  if (document.readyState !== 'complete') await new Promise(r => addEventListener('load', r));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await document.fonts.ready;
  const main = document.querySelector('main, [role=main], article') || document.body;
  const column = document.querySelector('.bd-article') || main;
  const imgs = [...main.querySelectorAll('img')];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  const prose = main.cloneNode(true);                 // TeX left as text outside code = math not rendered
  prose.querySelectorAll('pre, code, mjx-container, script').forEach(e => e.remove());
  // code, tables and outputs that do not fit the column: behind a scrollbar, clipped, or sticking out of it
  const right = column.getBoundingClientRect().right;
  const cut = [...main.querySelectorAll('pre, table, div.cell_output, div.highlight, .pst-scrollable-table-container')]
    .filter(e => e.offsetParent !== null && e.clientWidth > 0 &&
      ((getComputedStyle(e).overflowX !== 'visible' && e.scrollWidth > e.clientWidth + 1) || e.getBoundingClientRect().right > right + 1))
    .map(e => `${e.tagName.toLowerCase()} ${e.scrollWidth}px in ${e.clientWidth}px: ${e.textContent.trim().slice(0, 70)}`);
  const outputs = [...main.querySelectorAll('div.cell_output')].filter(o => o.textContent.trim() || o.querySelector('img'));
  return JSON.stringify({
    title: document.title,
    math: document.querySelectorAll('mjx-container').length,
    math_errors: document.querySelectorAll('mjx-merror, mjx-container [data-mjx-error]').length,
    raw_tex: (prose.textContent.match(/\$\$|\\\(|\\mathcal|\\frac/g) || []).length,
    // a markdown table left as text: its |---| row (smart quotes turn --- into an em dash)
    raw_tables: prose.textContent.match(/\|\s*:?(?:-{3,}|[\u2013\u2014]+)-*:?\s*\|[^\n]*/g) || [],
    cut: cut,
    column: Math.round(column.getBoundingClientRect().width),
    outputs: outputs.length,
    output_tables: outputs.filter(o => o.querySelector('table')).length,
    output_images: outputs.filter(o => o.querySelector('img')).length,
    tables: main.querySelectorAll('table').length,
    entries: main.querySelectorAll('dl.py').length,
    param_tables: main.querySelectorAll('dl.py > dd > table, dl.py > dd > .pst-scrollable-table-container > table').length,
    folded_sources: main.querySelectorAll('.cell.tag_hide-input details').length,
    images: imgs.map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    body_links: [...column.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  });
})()
"""
WIDTH, HEIGHT = 1280, 900    # a laptop's browser window: code and tables must fit its column


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site CI built (ALA_DOCS_SITE) or a fresh build, served on 127.0.0.1."
    given = os.environ.get("ALA_DOCS_SITE")
    path = Path(given) if given else build_docs.build(tmp_path_factory.mktemp("site")).parent
    assert (path / "index.html").is_file(), f"no index.html in {path}"
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    handler = functools.partial(Quiet, directory=str(path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("headless Chromium not found: `apt-get install chromium` (Debian) to run the browser test of the docs site")
    b = Chromium(tmp_path / "profile")
    b.call("Emulation.setDeviceMetricsOverride", session=True, width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
    yield b
    b.close()


def screenshot(browser, path: Path, element: str = None) -> int:
    "A JPEG of the window scrolled to `element` (JavaScript that finds it; None: the top of the page); its size in bytes."
    import base64
    if element:
        browser.evaluate(f"(async () => {{ ({element}).scrollIntoView(); scrollBy(0, -90);"
                         " await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))); return 0; })()")
    shot = browser.call("Page.captureScreenshot", session=True, format="jpeg", quality=60)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path.stat().st_size


def shots_dir(tmp_path) -> Path:
    "Where the screenshots go: ALA_DOCS_SHOTS (`figures/docs` refreshes the committed ones), else beside CI's site build."
    if os.environ.get("ALA_DOCS_SHOTS"): return Path(os.environ["ALA_DOCS_SHOTS"])
    if os.environ.get("ALA_DOCS_SITE"): return Path(os.environ["ALA_DOCS_SITE"]).parent / "shots"
    return tmp_path / "shots"


@pytest.mark.slow
def test_site_renders_in_chromium(site, browser, tmp_path):
    home = browser.open(f"{site}/index.html")
    assert browser.failed_requests() == []
    assert home["math"] >= 2 and home["math_errors"] == 0 and home["raw_tex"] == 0, home
    assert home["images"] and all(i["ok"] for i in home["images"]), home["images"]
    assert home["output_tables"] >= 3, "the home page's results are not HTML tables"
    pages = [n[:-6] + ".html" for n in build_docs.notebooks()[1:]] + ["api.html"]
    assert not [p for p in pages if p not in home["links"]], "the navigation misses notebooks"
    assert not [p for p in pages[:-1] if p not in home["body_links"]], "the home page's table of notebooks misses some"

    losses = browser.open(f"{site}/00_losses.html")
    assert browser.failed_requests() == []
    assert losses["math"] >= 20 and losses["math_errors"] == 0 and losses["raw_tex"] == 0, {k: losses[k] for k in ("math", "math_errors", "raw_tex")}
    assert losses["images"] and all(i["ok"] for i in losses["images"]), losses["images"]
    assert "api.html" in losses["links"] and "01_models.html" in losses["links"]
    assert losses["outputs"] >= 10 and losses["output_images"] >= 2, "00_losses should show what its checks compare"

    # nbdev's API entries where the code is: signature, docstring, parameter table, the source behind a fold
    assert {"ala_paper.losses.ALALoss", "ala_paper.losses.quantity_factor", "ala_paper.losses.ALALoss.forward"} <= set(losses["ids"])
    assert losses["entries"] >= 10 and losses["param_tables"] >= 5 and losses["folded_sources"] >= 10, losses
    assert any(l.startswith("https://github.com/") and "/ala_paper/losses.py#L" in l for l in losses["links"])
    assert "#ala_paper.losses.ALALoss" in losses["links"], "names in the prose do not link to their entries"

    api = browser.open(f"{site}/api.html")          # the index: every name links to its entry in its notebook
    assert browser.failed_requests() == []
    assert {"00_losses.html#ala_paper.losses.ALALoss", "00_losses.html#ala_paper.losses.quantity_factor",
            "04_train.html#ala_paper.train.train", "00_core.html#ala_paper.core.project_root"} <= set(api["links"]), api["links"]
    assert "00_losses.html" in api["links"]


@pytest.mark.slow
def test_site_pages_show_tables_outputs_and_whole_lines(site, browser, tmp_path):
    "Every page: no markdown table left as text, no code line or table cut off at a 1280 px window; Runs pages show results."
    bad = {}
    for page in ["index.html"] + [n[:-6] + ".html" for n in build_docs.notebooks()[1:]] + ["api.html"]:
        s = browser.open(f"{site}/{page}")
        assert browser.failed_requests() == [], page
        assert all(i["ok"] for i in s["images"]), (page, s["images"])
        problems = [f"raw markdown table: {t[:70]}" for t in s["raw_tables"]] + [f"cut off: {c}" for c in s["cut"]]
        if page[:-5] + ".ipynb" in build_docs.RUNS:
            if not s["outputs"]: problems.append("a Runs page without any output")
            if page == "tables.html" and not s["output_tables"]: problems.append("no table among the outputs")
            if page in ("figures.html", "train.html") and not s["output_images"]: problems.append("no figure among the outputs")
        if problems: bad[page] = problems
    assert not bad, "\n".join(f"{p}: {x}" for p, xs in bad.items() for x in xs)

    shots = shots_dir(tmp_path)
    sizes = []
    for name, page, element in (("home", "index", "document.querySelector('div.cell_output table')"),
                                ("losses", "00_losses", "document.getElementById('ala_paper.losses.la_loss')"),
                                ("tables", "tables", "[...document.querySelectorAll('div.cell_output table')]"
                                                     ".find(t => /\\d ± \\d/.test(t.textContent))")):
        browser.open(f"{site}/{page}.html")
        sizes.append(screenshot(browser, shots / f"{name}.jpg", element))
    assert all(2_000 < n < 400_000 for n in sizes), sizes
    print(f"screenshots in {shots}: {sizes} bytes")


def test_every_module_docstring_is_a_whole_sentence():
    "nbdev exports only the first line of a notebook's '> ' description: a wrapped one is cut mid-sentence."
    import ast
    for path in sorted((Path(__file__).parents[1] / 'ala_paper').glob('*.py')):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if doc and not path.name.startswith('_'):
            assert doc.rstrip().endswith(('.', ')', '`')), f'{path.name}: docstring cut off: {doc[-60:]!r}'
