"""data/paper_results.csv against the paper's printed tables; tables and figures rebuilt from fake runs
(contract-conformant results.json files in temp dirs), directly and through papermill."""
import json, os, re, subprocess, sys
from pathlib import Path
import pandas as pd, pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ala_paper.report import (load_paper, printed_table, write_fake_runs, fake_results, load_runs, paper_vs_ours,
                              benchmark_table, build_tables, build_figures, mean_std, METRICS)

# Tables 1-4 exactly as the paper's text prints them (tab-separated, LaTeX marks), copied from
# ../shared/paper/ala-loss-paper.md so the test also runs where that file is absent.
PRINTED = r"""
# Table 1
Cross Entropy $\dagger$	64.0	33.8	5.8	41.6	65.9	37.5	7.7	44.4
Focal Loss $\ddagger$	-	-	-	-	64.3	37.1	8.2	43.7
OLTR $\ddagger$	-	-	-	-	51.0	40.8	20.8	41.9
Decouple-LWS $\dagger$	57.1	45.2	29.3	47.7	60.2	47.2	30.3	49.9
DisAlign $\dagger$	59.9	49.9	31.8	51.3	61.5	50.7	33.1	52.6
Casual Norm $\ddagger$	-	-	-	-	62.7	48.8	31.6	51.8
Balanced softmax $\ddagger$	-	-	-	-	62.2	48.8	29.8	51.4
PC softmax $\ddagger$	-	-	-	-	60.4	46.7	23.8	48.9
LADE $\ddagger$	-	-	-	-	62.3	49.3	31.2	51.9
Logit Adjust (loss)	-	-	-	51.0	-	-	-	-
LDAM + DRW *	61.8	47.2	31.4	50.7	62.9	47.5	31.9	51.3
ALA Loss	62.4	49.1	35.7	<b>52.4</b>	64.1	49.9	34.7	<b>53.3</b>

# Table 2
Cross Entropy $\dagger$	72.2	63.0	57.2	61.7
CB-Focal $\ddagger$	-	-	-	61.1
Decouple-LWS $\dagger$	65.0	66.3	65.5	65.9
BBN $\dagger$	49.4	70.8	65.3	66.3
DisAlign $\dagger$	-	-	-	67.8
Casual Norm $\ddagger$	-	-	-	63.9
Balanced Softmax $\ddagger$	-	-	-	69.8
PC Softmax $\ddagger$	-	-	-	69.3
LADE $\ddagger$	-	-	-	70.0
LDAM + DRW $\ddagger$	-	-	-	68.0
ALA Loss	71.3	70.8	70.4	<b>70.7</b>

# Table 3
Cross Entropy $\dagger$	45.7	27.3	8.2	30.2
Focal Loss $\dagger$	41.1	34.8	22.4	34.6
Range Loss $\dagger$	41.1	35.4	23.2	35.1
OLTR $\dagger$	44.7	37.0	25.3	35.9
Feature Aug $\dagger$	42.8	37.5	22.7	36.4
Decouple-LWS $\dagger$	40.6	39.1	28.6	37.6
DisAlign $\dagger$	40.4	42.4	30.1	39.3
Causal Norm $\ddagger$	23.8	35.8	40.4	32.4
Balanced Softmax $\ddagger$	42.0	39.3	30.5	38.6
PC Softmax $\ddagger$	43.0	39.1	29.6	38.7
LADE $\ddagger$	42.8	39.0	31.2	38.8
ALA Loss	43.9	40.1	32.9	<b>40.1</b>

# Table 4
Cross Entropy (CE)	<b>X</b>	<b>X</b>	<b>X</b>	65.9	37.5	7.7	44.4
LDAM	<b>✓</b>	<b>X</b>	<b>X</b>	62.9	47.5	31.9	51.3
$\mathcal{DF}$	<b>X</b>	<b>✓</b>	<b>X</b>	64.7	47.3	28.6	51.5
$\mathcal{QF}$	<b>X</b>	<b>X</b>	<b>✓</b>	61.4	47.7	33.0	51.0
$\mathcal{DF} \cdot \mathcal{A}^{LDAM}$	<b>✓</b>	<b>✓</b>	<b>X</b>	63.5	48.4	31.9	52.0
$\mathcal{DF} \cdot \mathcal{QF}$ (ALA Loss)	<b>X</b>	<b>✓</b>	<b>✓</b>	64.1	49.9	34.7	<b>53.3</b>
"""

def _norm(line: str) -> str:
    s = line.replace('<b>', '').replace('</b>', '')
    for a, b in ((r'$\mathcal{DF} \cdot \mathcal{A}^{LDAM}$', 'DF · A^LDAM'), (r'$\mathcal{DF} \cdot \mathcal{QF}$', 'DF · QF'),
                 (r'$\mathcal{DF}$', 'DF'), (r'$\mathcal{QF}$', 'QF'), (r'$\ddagger$', '‡'), (r'$\dagger$', '†'), ('\\*', '*')):
        s = s.replace(a, b)
    return '\t'.join(re.sub(r'\s+', ' ', c).strip() for c in s.split('\t'))

def _blocks(text: str) -> dict:
    out, cur = {}, None
    for l in text.splitlines():
        if l.startswith('# Table '): cur = out.setdefault('table' + l.split()[-1], [])
        elif l.strip() and cur is not None: cur.append(_norm(l))
    return out

@pytest.mark.parametrize('table', ['table1', 'table2', 'table3', 'table4'])
def test_csv_round_trips_to_printed_tables(table):
    assert printed_table(table) == _blocks(PRINTED)[table]

def test_csv_matches_the_paper_file_when_present():
    paper = ROOT.parent/'shared'/'paper'/'ala-loss-paper.md'
    if not paper.is_file(): pytest.skip(f'{paper} not here')
    lines, got, cur = paper.read_text().splitlines(), {}, None
    for l in lines:
        if l.startswith('Method\t') or l.startswith('\t<b>LDAM'): cur = []; continue
        if cur is None: continue
        if l.startswith('Table '): got['table' + l.split(':')[0].split()[-1].strip('*')] = cur; cur = None
        elif l.strip() and not l.startswith('\tMany'): cur.append(_norm(l))
    assert set(got) == {'table1', 'table2', 'table3', 'table4'}
    for t, v in got.items(): assert printed_table(t) == v, t

def test_csv_shape_and_marks():
    P = load_paper()
    assert list(P.columns) == ['table', 'dataset', 'backbone', 'method', 'mark', 'source', 'components', *METRICS]
    assert P.groupby('table').size().to_dict() == {'table1': 24, 'table2': 11, 'table3': 12, 'table4': 6}
    assert set(P['mark']) == {'', '†', '‡', '*'}
    assert P[P['mark'] != ''].source.str.len().min() > 10          # every mark keeps its caption's note
    raw = (ROOT/'data'/'paper_results.csv').read_text().splitlines()[1:]
    for line in raw:                                                 # numbers as printed: one decimal
        for x in line.split(',')[-4:]: assert x == '' or re.fullmatch(r'\d+\.\d', x), line

def test_tables_from_fake_runs(tmp_path):
    runs = tmp_path/'runs'
    write_fake_runs(runs, 'table4', seeds=[0, 1, 2]); write_fake_runs(runs, 'table1', rows=['focal'], seeds=[0, 1])
    write_fake_runs(runs/'inet', 'table4', rows=['ce', 'ala'], seeds=[0, 1], dataset='imagenet-lt', arch='resnext50_32x4d')
    R = load_runs(runs)
    assert len(R) == 18 + 2 + 4
    B = benchmark_table('synthetic-lt', R).set_index('loss')
    want = mean_std([fake_results('ala', s)['top1']['few'] for s in (0, 1, 2)])
    assert B.loc['ala', 'ours_few'] == pytest.approx(want[0]) and B.loc['ala', 'ours_few_std'] == pytest.approx(want[1])
    assert B.loc['focal', 'n'] == 2 and B.loc['logit-adjust', 'n'] == 0
    ce = mean_std([fake_results('ce', s)['top1']['all'] for s in (0, 1, 2)])[0]
    assert B.loc['qf', 'gain_all'] == pytest.approx(B.loc['qf', 'ours_all'] - ce)
    T = paper_vs_ours('table4', R).set_index('row')
    assert T.loc['ce', 'n'] == 2 and T.loc['df', 'n'] == 0
    ours = mean_std([fake_results('ala', s, 'imagenet-lt')['top1']['all'] for s in (0, 1)])[0]
    assert T.loc['ala', 'diff_all'] == pytest.approx(ours - 53.3)
    mds = build_tables(runs, tmp_path/'out')
    names = sorted(p.name for p in (tmp_path/'out').iterdir())
    for t in ('table1', 'table2', 'table3', 'table4', 'benchmark_synthetic-lt', 'benchmark_cifar10-lt'):
        assert f'{t}.md' in names and f'{t}.csv' in names
    row = [l for l in mds['table4'].splitlines() if l.startswith('| DF · QF (ALA Loss)')][0]
    assert '| 2 | 64.1 |' in row and '53.3' in row
    df_row = [l for l in mds['table4'].splitlines() if l.startswith('| DF |')][0]
    assert [c.strip() for c in df_row.split('|')].count('-') == 9      # seeds + 4 x ours + 4 x difference
    csv = pd.read_csv(tmp_path/'out'/'benchmark_synthetic-lt.csv')
    assert csv.set_index('loss').loc['ala', 'ours_all'] == pytest.approx(B.loc['ala', 'ours_all'], abs=1e-3)

def test_no_runs_gives_dashes_and_skips_figures(tmp_path, capsys):
    mds = build_tables(tmp_path/'none', tmp_path/'out')
    body = [l for l in mds['benchmark_synthetic-lt'].splitlines() if l.startswith('| ') and 'Method' not in l]
    assert len(body) == 9 and all([c.strip() for c in l.split('|')].count('-') == 6 for l in body)
    made = build_figures(tmp_path/'none', tmp_path/'out')
    assert list(made) == ['figure2_qf_vs_ldam_imagenet-lt-range']
    assert 'figure1: skipped' in capsys.readouterr().out

def test_figures_from_fake_runs(tmp_path):
    write_fake_runs(tmp_path/'runs', 'table4', seeds=[0, 1])
    made = build_figures(tmp_path/'runs', tmp_path/'out', dpi=80)
    assert len(made) == 4
    for png, pdf in made.values():
        assert png.stat().st_size < 300_000 and png.read_bytes()[:4] == b'\x89PNG' and pdf.read_bytes()[:4] == b'%PDF'

def test_bad_results_file_is_named(tmp_path):
    (tmp_path/'a'/'b').mkdir(parents=True); (tmp_path/'a'/'b'/'results.json').write_text('{"top1": {}}')
    with pytest.raises(ValueError, match=r'a/b/results.json is not a results.json'): load_runs(tmp_path)

@pytest.mark.parametrize('nb', ['tables', 'figures'])
def test_notebooks_through_papermill(tmp_path, nb):
    write_fake_runs(tmp_path/'runs', 'table4', seeds=[0, 1])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), 'MPLBACKEND': 'Agg'}
    env.pop('IN_TEST', None)
    r = subprocess.run([sys.executable, '-m', 'papermill', str(ROOT/'nbs'/f'{nb}.ipynb'), str(tmp_path/'out.ipynb'),
                        '-p', 'runs_dir', str(tmp_path/'runs'), '-p', 'out_dir', str(tmp_path/'out'), '--no-progress-bar'],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = sorted(p.name for p in (tmp_path/'out').iterdir())
    if nb == 'tables': assert 'tables.md' in out and 'table4.csv' in out
    else: assert sum(n.endswith('.png') for n in out) == 4 and sum(n.endswith('.pdf') for n in out) == 4
