"""The paper's numbers as data (data/paper_results.csv against the paper's own lines in data/paper_tables.md, and
against the paper's text when it is present), the Figure 1 classes and published numbers, and tables and figures
rebuilt from fake runs (test fixtures in temp dirs)."""
import csv, json, re, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ala_paper.fixtures import write_fake_run, write_fake_runs
from ala_paper.metrics import shot_group
from ala_paper.plots import build_figures
from ala_paper.report import (FAKE_BANNER, METRICS, benchmark_table, build_tables, load_paper, load_published, load_runs,
                              mean_std, paper_vs_ours, posthoc_top1, printed_table)
from ala_paper.sweep import TABLES

PAPER = ROOT.parent/'shared'/'paper'/'ala-loss-paper.md'

def verbatim_blocks(text: str) -> dict:
    "table -> its lines, from data/paper_tables.md's ```text blocks under '## Table N'."
    out, table, inside = {}, None, False
    for line in text.splitlines():
        if line.startswith('## Table '): table = 'table' + line.split()[-1]
        elif line.startswith('```text'): inside, out[table] = True, []
        elif line.startswith('```'): inside = False
        elif inside: out[table].append(line)
    return out

def paper_blocks(text: str) -> dict:
    "table -> its non-empty lines, read from the paper's text (header lines up to the caption)."
    out, lines = {}, None
    for line in text.splitlines():
        if line.startswith('Method\t') or line.startswith('\t<b>LDAM'): lines = [line]
        elif lines is not None and line.startswith('Table '):
            out['table' + line.split(':')[0].split()[-1]], lines = lines, None
        elif lines is not None and line.strip(): lines.append(line)
    return out

def normalise(line: str) -> str:
    "A printed line with the paper's LaTeX and HTML as plain text (the form `printed_table` writes)."
    s = line.replace('<b>', '').replace('</b>', '')
    for a, b in ((r'$\mathcal{DF} \cdot \mathcal{A}^{LDAM}$', 'DF · A^LDAM'), (r'$\mathcal{DF} \cdot \mathcal{QF}$', 'DF · QF'),
                 (r'$\mathcal{DF}$', 'DF'), (r'$\mathcal{QF}$', 'QF'), (r'$\ddagger$', '‡'), (r'$\dagger$', '†')):
        s = s.replace(a, b)
    return '\t'.join(re.sub(r'\s+', ' ', c).strip() for c in s.split('\t'))

VERBATIM = verbatim_blocks((ROOT/'data'/'paper_tables.md').read_text())

@pytest.mark.parametrize('table', ['table1', 'table2', 'table3', 'table4'])
def test_csv_prints_back_to_the_papers_lines(table):
    rows = [l for l in VERBATIM[table] if not (l.startswith('Method\t') or l.startswith('\t'))]
    assert printed_table(table) == [normalise(l) for l in rows]

def test_the_copy_is_the_papers_text():
    if not PAPER.is_file(): pytest.skip(f'{PAPER} not here (a clean clone checks against data/paper_tables.md only)')
    assert paper_blocks(PAPER.read_text()) == VERBATIM

def test_csv_shape_and_marks():
    paper = load_paper()
    assert list(paper.columns) == ['table', 'dataset', 'backbone', 'method', 'mark', 'source', 'components', 'group',
                                   *METRICS]
    assert paper.groupby('table').size().to_dict() == {'table1': 24, 'table2': 11, 'table3': 12, 'table4': 6}
    assert set(paper['mark']) == {'', '†', '‡', '*'}
    assert paper[paper['mark'] != ''].source.str.len().min() > 10          # every mark keeps its caption's note
    groups = paper[paper.table == 'table1'].drop_duplicates('method').set_index('method').group
    assert list(groups[groups == 'logit adjusting'].index) == ['Casual Norm', 'Balanced softmax', 'PC softmax', 'LADE',
                                                               'Logit Adjust (loss)', 'LDAM + DRW']
    for line in (ROOT/'data'/'paper_results.csv').read_text().splitlines()[1:]:   # numbers as printed: one decimal
        for x in line.split(',')[-4:]: assert x == '' or re.fullmatch(r'\d+\.\d', x), line

def test_figure1_classes():
    with open(ROOT/'data'/'figure1_classes.csv', newline='') as f: rows = {r['paper_name'] or r['name']: r for r in csv.DictReader(f)}
    assert (rows['Appenzeller']['wnid'], rows['Black Swan']['wnid']) == ('n02107908', 'n01860187')
    assert [float(rows['Appenzeller'][k]) for k in ('paper_ce_acc', 'paper_ldam_acc')] == [0.47, 0.18]
    assert [float(rows['Black Swan'][k]) for k in ('paper_ce_acc', 'paper_ldam_acc')] == [0.8, 0.84]
    for r in rows.values():                                           # roles agree with the training counts
        assert shot_group(int(r['train_images'])) == r['shot_group'] and len(r['source']) > 40
        assert r['role'] != 'head-yet-hard' or r['shot_group'] == 'many'
        assert r['role'] != 'tail-yet-easy' or r['shot_group'] == 'few'

def test_published_numbers_key_bench_rows():
    published = load_published()
    assert set(published.row) <= {r.key for r in TABLES['bench'].rows}
    assert published.set_index('row')['all'].to_dict() == {'ce': 70.36, 'focal': 70.38, 'ldam': 73.35,
                                                           'cb-focal': 74.57, 'ldam-drw': 77.03}
    assert (published.source.str.len() > 40).all()

def test_each_backbone_is_filled_by_its_own_runs(tmp_path):
    runs = tmp_path/'runs'
    write_fake_runs(runs, 'table1', rows=['ce', 'pc-softmax', 'ala'], seeds=[0, 1, 2], backbones=['R-50'])
    frame = paper_vs_ours('table1', load_runs(runs, allow_fake=True)).set_index(['row', 'backbone'])
    assert frame.loc[('ce', 'R-50'), 'n'] == 3 and frame.loc[('ce', 'X-50'), 'n'] == 0
    ours = mean_std([json.loads(p.read_text())['top1']['all'] for p in runs.rglob('table1/ce/resnet50/*/results.json')])
    assert frame.loc[('ce', 'R-50'), 'ours_all'] == pytest.approx(ours[0])
    assert frame.loc[('ce', 'R-50'), 'ours_all_std'] == pytest.approx(ours[1])

def test_pc_softmax_is_read_from_the_ce_runs_logits(tmp_path):
    folders = write_fake_runs(tmp_path, 'table2', rows=['ce'], seeds=[0, 1])
    runs = load_runs(tmp_path, allow_fake=True)
    frame = paper_vs_ours('table2', runs).set_index('row')
    by_hand = []
    for folder in folders:
        res = json.loads((folder/'results.json').read_text())
        logits = np.load(folder/'test_logits.npy').astype(np.float64)
        preds = (logits - np.log(np.array(res['class_counts']) / sum(res['class_counts']))).argmax(1)
        targets = np.array(res['test_targets'])
        by_hand.append(np.mean([100 * (preds[targets == c] == c).mean() for c in range(len(res['class_counts']))]))
        assert posthoc_top1(res, folder)[0]['all'] == pytest.approx(by_hand[-1])
    assert frame.loc['pc-softmax', 'ours_all'] == pytest.approx(np.mean(by_hand))
    assert frame.loc['pc-softmax', 'posthoc'] == 'ce runs, from their test logits'
    assert frame.loc['ce', 'ours_all'] != pytest.approx(np.mean(by_hand))

def test_default_recipe_only_and_notes(tmp_path, capsys):
    write_fake_runs(tmp_path/'runs', 'bench', rows=['ce', 'ala'], seeds=[0, 1])
    write_fake_runs(tmp_path/'runs', 'bench', rows=['ala'], seeds=[0], params={'loss_kw': {'qf_norm': 'ln2'}})
    write_fake_run(tmp_path/'runs'/'by-hand', 'ala', 2, data_seed=0)
    old = write_fake_run(tmp_path/'runs'/'older', 'ce', 3)            # recorded before backbone_lr existed
    res = json.loads((tmp_path/'runs'/'older'/'results.json').read_text())
    del res['params']['backbone_lr']
    (tmp_path/'runs'/'older'/'results.json').write_text(json.dumps(res))
    bench = benchmark_table('synthetic-lt', load_runs(tmp_path/'runs', allow_fake=True)).set_index('row')
    assert bench.loc['ala', 'seeds'] == '0 1' and bench.loc['ce', 'seeds'] == '0 1 3' and old['params']['seed'] == 3
    mds = build_tables(tmp_path/'runs', tmp_path/'out', 'synthetic-lt', allow_fake=True)
    note = capsys.readouterr().out
    assert 'tables of synthetic-lt: 2 run(s) on synthetic-lt left out' in note
    assert 'loss_kw (1)' in note and 'data_seed (1)' in note
    assert 'note: tables of synthetic-lt: 2 run(s)' in (tmp_path/'out'/'tables_synthetic-lt.md').read_text()
    assert mds['benchmark_synthetic-lt'].startswith(FAKE_BANNER)

def test_tables_of_a_variant(tmp_path):
    write_fake_runs(tmp_path/'runs', 'table3', rows=['ce', 'pc-softmax', 'ala'], seeds=[0], params={'epochs': 2})
    mds = build_tables(tmp_path/'runs', tmp_path/'out', 'places-lt', allow_fake=True)
    assert 'note: tables of places-lt: 2 run(s)' in (tmp_path/'out'/'tables_places-lt.md').read_text()
    mds = build_tables(tmp_path/'runs', tmp_path/'out', 'places-lt', allow_fake=True, params={'epochs': 2})
    assert 'Runs swept with --param {"epochs": 2}' in mds['table3'] and 'note:' not in (tmp_path/'out'/'tables_places-lt.md').read_text()
    frame = paper_vs_ours('table3', load_runs(tmp_path/'runs', allow_fake=True), params={'epochs': 2}).set_index('row')
    assert frame.loc[['ce', 'pc-softmax', 'ala'], 'n'].tolist() == [1, 1, 1]

def test_fake_runs_are_refused_unless_asked_for(tmp_path):
    write_fake_run(tmp_path/'a', 'ce', 0)
    with pytest.raises(ValueError, match=r'a/results.json is a fake run'): build_tables(tmp_path, tmp_path/'out')
    with pytest.raises(ValueError, match=r'a/results.json is a fake run'): build_figures(tmp_path, tmp_path/'out')

def test_damaged_results_files_are_named_and_the_others_kept(tmp_path, capsys):
    "A cluster's damage (a file cut short, emptied, overwritten) costs that run, not the tables and figures."
    write_fake_runs(tmp_path/'runs', 'bench', rows=['ce', 'ldam-drw', 'ala'], seeds=[0])
    damaged = {'a/b': '{"top1": {}}', 'cut': '{"dataset": "synthetic-lt", "params": {"ar', 'empty': '', 'nul': '\0' * 64}
    for where, text in damaged.items():
        (tmp_path/'runs'/where).mkdir(parents=True)
        (tmp_path/'runs'/where/'results.json').write_text(text)
    runs = load_runs(tmp_path/'runs', allow_fake=True)
    assert len(runs) == 3 and len(runs.attrs['damaged']) == 4
    mds = build_tables(tmp_path/'runs', tmp_path/'out', 'synthetic-lt', allow_fake=True)
    table = mds['benchmark_synthetic-lt']
    assert '| DF · QF (ALA Loss) | 1 |' in table
    out = capsys.readouterr().out
    for where in damaged: assert f'{where}/results.json left out: not a results.json' in out, where
    assert 'left out' in (tmp_path/'out'/'tables_synthetic-lt.md').read_text()
    build_figures(tmp_path/'runs', tmp_path/'fig', allow_fake=True)
    assert capsys.readouterr().out.count('left out: not a results.json') == 4

def test_no_runs_gives_dashes_and_skips_figures(tmp_path, capsys):
    (tmp_path/'none').mkdir()
    mds = build_tables(tmp_path/'none', tmp_path/'out')
    body = [l for l in mds['benchmark_synthetic-lt'].splitlines() if l.startswith('| ') and 'Method' not in l]
    assert len(body) == 13 and all([c.strip() for c in l.split('|')][2:9] == ['-'] * 7 for l in body)
    assert sorted(p.name for p in (tmp_path/'out').glob('table*.md')) == [f'table{i}.md' for i in (1, 2, 3, 4)] + ['tables.md']
    made = build_figures(tmp_path/'none', tmp_path/'out')
    assert list(made) == ['figure2_qf_vs_ldam_synthetic-lt']
    assert 'figure1: skipped' in capsys.readouterr().out


def test_a_mistyped_runs_dir_writes_nothing(tmp_path):
    "A runs folder that is not there is an error, not tables without runs written over the committed ones."
    for build in (build_tables, build_figures):
        with pytest.raises(FileNotFoundError, match='runs_dir .*typo does not exist: give the folder'):
            build(tmp_path/'typo', tmp_path/'out')
    assert not (tmp_path/'out').exists()

def test_figures_pick_one_backbone(tmp_path):
    write_fake_runs(tmp_path/'runs', 'table1', rows=['ce', 'ldam-drw', 'ala'], seeds=[0, 1])
    made = build_figures(tmp_path/'runs', tmp_path/'out', 'imagenet-lt', allow_fake=True, dpi=60)
    assert sorted(made) == sorted(f'{n}_imagenet-lt' for n in (
        'figure1_per_class_accuracy', 'figure1_classes', 'figure2_qf_vs_ldam', 'figure3_true_class_probability',
        'figure3_probability_shares', 'figure4_adjusting_terms', 'figure4_factors'))
    classes = pd.read_csv(made['figure1_classes_imagenet-lt'][0])
    assert classes.name.tolist() == ['Appenzeller', 'Black Swan'] and classes.paper_ldam.tolist() == [18.0, 84.0]
    assert set(classes.seeds_ce) == {2}                                   # the X-50 runs only, both seeds
    other = build_figures(tmp_path/'runs', tmp_path/'out', 'imagenet-lt', arch='resnet50', allow_fake=True, dpi=60)
    assert 'figure1_per_class_accuracy_imagenet-lt_resnet50' in other
    for png, pdf in (v for v in made.values() if len(v) == 2):
        assert png.read_bytes()[:4] == b'\x89PNG' and pdf.read_bytes()[:4] == b'%PDF' and png.stat().st_size < 300_000


def test_papermill_tables_and_figures_mistakes_end_in_one_line(tmp_path):
    "papermill on tables.ipynb / figures.ipynb: a misspelt -p, a missing runs folder, a bad value; one line each, no output."
    import os, subprocess
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}
    for nb, args, want in (('tables', ['-p', 'run_dir', 'runs'], "error: unknown parameter 'run_dir' (did you mean 'runs_dir'?); valid parameters: runs_dir"),
                           ('tables', ['-p', 'runs_dir', str(tmp_path/'typo')], 'typo does not exist: give the folder'),
                           ('tables', ['-p', 'upstream_dir', str(tmp_path/'theirs')], 'theirs is not a folder: give the --out'),
                           ('figures', ['-p', 'arch', 'resnet9'], "error: unknown arch 'resnet9'")):
        r = subprocess.run([sys.executable, '-m', 'papermill', str(ROOT/'nbs'/f'{nb}.ipynb'), str(tmp_path/'o.ipynb'),
                            '-p', 'out_dir', str(tmp_path/'out'), *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode != 0 and last.startswith('error: ') and want in last, (nb, args, r.stderr[-800:])
        assert not (tmp_path/'out').exists()


def test_their_code_column_shows_finished_upstream_runs_only(tmp_path, capsys):
    "The CIFAR-10-LT table puts their code's finished runs beside ours; a run still training is named, not shown."
    write_fake_runs(tmp_path/'runs', 'bench', rows=['ce', 'ldam-drw'], seeds=[0], dataset='cifar10-lt')
    def theirs(row, seed, final, best, done=200):
        folder = tmp_path/'up'/row/f'seed{seed}'
        folder.mkdir(parents=True)
        (folder/'results.json').write_text(json.dumps(dict(
            dataset='cifar10-lt', loss=row, upstream_commit='2536330f2a', params=dict(seed=seed, epochs=200),
            epochs_done=done, top1=dict(all=final), best_test_epoch=dict(epoch=199, top1=dict(all=best)))))
    theirs('ldam-drw', 0, 76.5, 77.1); theirs('ce', 0, 70.0, 70.4, done=120)
    mds = build_tables(tmp_path/'runs', tmp_path/'out', 'cifar10-lt', allow_fake=True, upstream_dir=tmp_path/'up')
    lines = mds['benchmark_cifar10-lt'].splitlines()
    head = [l for l in lines if l.startswith('| Method')][0].split(' | ')
    column = head.index('All, their code on our images (final / best epoch)')
    cells = {l.split(' | ')[0]: l.split(' | ')[column] for l in lines if l.startswith('| ') and 'Method' not in l}
    assert cells['| LDAM + DRW'] == '76.5 / 77.1' and cells['| Cross Entropy'] == '-'
    assert "kaidic/LDAM-DRW's own cifar_train.py (commit 2536330f2a)" in mds['benchmark_cifar10-lt']
    assert 'their code is still training (epoch 120 of 200)' in capsys.readouterr().out
    plain = build_tables(tmp_path/'runs', tmp_path/'out2', 'cifar10-lt', allow_fake=True)
    assert 'their code' not in plain['benchmark_cifar10-lt']
