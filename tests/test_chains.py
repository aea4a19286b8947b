"""Each command chain of figures/README.md, run end to end on fake runs: the `# chain: <dataset>` block's lines as
written, with a stand-in for nbs/train.ipynb (it writes a fake finished run at once), one seed, and paths moved
into a temporary folder; then the filled tables and the figures are checked."""
import os, re, shlex, subprocess, sys
from pathlib import Path
import pandas as pd, pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fake_training import write_fake_train_notebook

README = ROOT/'figures'/'README.md'
FEW_ROWS = ['--rows', 'ce', 'pc-softmax', 'ldam-drw', 'ala']      # CIFAR / synthetic: the rows the figures need

def chain(dataset: str) -> list:
    "The command lines of the README's `# chain: <dataset>` block."
    blocks = re.findall(r'```bash\n(.*?)```', README.read_text(), flags=re.S)
    block = next(b for b in blocks if b.startswith(f'# chain: {dataset}\n'))
    return [l for l in block.splitlines() if l.strip() and not l.startswith('#')]

def localise(tokens: list, tmp: Path, fake_nb: str, few_rows: bool) -> list:
    "The command with runs/, figures/ and /data/ under `tmp` (data folders made, empty), one seed, the fake notebook."
    out, in_seeds = [], False
    for token in tokens:
        if in_seeds and token.isdigit():
            if token == '0': out.append(token)
            continue
        in_seeds = token == '--seeds'
        if token in ('runs', 'figures') or token.startswith(('runs/', 'figures/')): token = str(tmp/token)
        out.append(token.replace('/data/', f'{tmp}/data/'))
        if out[-1].startswith('data_root='):   # the sweep wants the folder to exist; the fake runs never read it
            Path(out[-1].split('=', 1)[1]).mkdir(parents=True, exist_ok=True)
    if out[:3] == ['python', '-m', 'ala_paper.sweep']:
        return [sys.executable, *out[1:], '--notebook', fake_nb, *(FEW_ROWS if few_rows else [])]
    assert out[0] == 'papermill', out
    return [sys.executable, '-m', *out, '-p', 'allow_fake', 'True', '--no-progress-bar']

def run_chain(dataset: str, tmp: Path, few_rows: bool = False):
    fake_nb = write_fake_train_notebook(tmp/'fake_train.ipynb')
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), 'MPLBACKEND': 'Agg'}
    env.pop('IN_TEST', None)
    lines = chain(dataset)
    assert lines and lines[-1].startswith('papermill nbs/figures.ipynb') and f'-p dataset {dataset}' in lines[-1]
    for line in lines:
        r = subprocess.run(localise(shlex.split(line), tmp, fake_nb, few_rows), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=1800)
        assert r.returncode == 0, f'{line}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return tmp/'figures'

def seeds_of(md_file: Path) -> dict:
    "Method -> its 'Seeds' cells in a table written by nbs/tables.ipynb."
    lines = [l for l in md_file.read_text().splitlines() if l.startswith('| ')]
    head = [c.strip() for c in lines[0].strip('|').split('|')]
    cols = [i for i, c in enumerate(head) if c.endswith('Seeds')]
    rows = [[c.strip() for c in l.strip('|').split('|')] for l in lines[1:]]
    return {r[0]: [r[i] for i in cols] for r in rows if len(r) == len(head) and not r[0].startswith('*')}

def figures_made(out: Path, dataset: str) -> list:
    return sorted(p.name for p in out.glob(f'figure*_{dataset}.png'))

FIGURES = ['figure1_per_class_accuracy', 'figure2_qf_vs_ldam', 'figure3_true_class_probability',
           'figure4_adjusting_terms']

@pytest.mark.slow
def test_imagenet_lt_chain(tmp_path):
    out = run_chain('imagenet-lt', tmp_path)
    table1 = seeds_of(out/'table1.md')
    runnable = ('Cross Entropy †', 'Focal Loss ‡', 'Balanced softmax ‡', 'PC softmax ‡', 'Logit Adjust (loss)',
                'LDAM + DRW *', 'ALA Loss')
    assert {m: s for m, s in table1.items() if s != ['-', '-']} == {m: ['1', '1'] for m in runnable}  # both backbones
    assert all(s == ['1'] for s in seeds_of(out/'table4.md').values()) and len(seeds_of(out/'table4.md')) == 6
    assert figures_made(out, 'imagenet-lt') == sorted(f'{f}_imagenet-lt.png' for f in FIGURES)
    classes = pd.read_csv(out/'figure1_classes_imagenet-lt.csv')
    assert classes.name.tolist() == ['Appenzeller', 'Black Swan'] and classes.paper_ce.tolist() == [47.0, 80.0]
    assert (out/'table1.md').read_text().startswith('**Made from FAKE runs')

@pytest.mark.slow
def test_inat2018_chain(tmp_path):
    out = run_chain('inat2018', tmp_path)
    table2 = seeds_of(out/'table2.md')
    assert {m for m, s in table2.items() if s == ['1']} == {'Cross Entropy †', 'CB-Focal ‡', 'Balanced Softmax ‡',
                                                           'PC Softmax ‡', 'LDAM + DRW ‡', 'ALA Loss'}
    assert figures_made(out, 'inat2018') == sorted(f'{f}_inat2018.png' for f in FIGURES)

@pytest.mark.slow
def test_places_lt_chain(tmp_path):
    out = run_chain('places-lt', tmp_path)
    table3 = seeds_of(out/'table3.md')
    assert {m for m, s in table3.items() if s == ['1']} == {'Cross Entropy †', 'Focal Loss †', 'Balanced Softmax ‡',
                                                           'PC Softmax ‡', 'ALA Loss'}
    assert figures_made(out, 'places-lt') == sorted(f'{f}_places-lt.png' for f in FIGURES)

@pytest.mark.slow
@pytest.mark.parametrize('dataset', ['cifar10-lt', 'synthetic-lt'])
def test_benchmark_chains(tmp_path, dataset):
    out = run_chain(dataset, tmp_path, few_rows=True)
    bench = seeds_of(out/f'benchmark_{dataset}.md')
    assert {m for m, s in bench.items() if s == ['1']} == {'Cross Entropy', 'PC Softmax', 'LDAM + DRW',
                                                          'DF · QF (ALA Loss)'}
    assert figures_made(out, dataset) == sorted(f'{f}_{dataset}.png' for f in FIGURES)
    published = 'All, published' in (out/f'benchmark_{dataset}.md').read_text()
    assert published == (dataset == 'cifar10-lt')
