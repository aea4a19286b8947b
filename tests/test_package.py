"""A citable, installable package: the licence setup.py declares, CITATION.cff, the reported version, and a wheel
that builds offline and imports `ala_paper.losses` in a fresh environment, away from the repository and notebooks."""
import configparser, os, re, shutil, subprocess, sys, venv, zipfile
from pathlib import Path

import pytest

import ala_paper

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = configparser.ConfigParser(delimiters=['='])
SETTINGS.read(ROOT / 'settings.ini', encoding='utf-8')
VERSION = SETTINGS['DEFAULT']['version']


def test_version_is_reported():
    assert re.fullmatch(r'\d+\.\d+\.\d+', ala_paper.__version__)
    assert ala_paper.__version__ == VERSION


def test_license_matches_setup_py():
    assert SETTINGS['DEFAULT']['license'] == 'apache2'
    assert 'license="Apache-2.0"' in (ROOT / 'setup.py').read_text()
    text = (ROOT / 'LICENSE').read_text()
    assert text.lstrip().startswith('Apache License') and 'Version 2.0, January 2004' in text
    assert 'END OF TERMS AND CONDITIONS' in text and len(text.splitlines()) > 190     # the whole licence, not a stub


def test_citation_cff():
    import yaml   # PyYAML: installed with the dev extras (jupyterlab's jupyter_events needs it)
    cff = yaml.safe_load((ROOT / 'CITATION.cff').read_text())
    assert cff['cff-version'] == '1.2.0' and cff['type'] == 'software'
    assert cff['version'] == VERSION and cff['license'] == 'Apache-2.0'
    assert cff['repository-code'] == SETTINGS['DEFAULT']['git_url']
    paper = cff['preferred-citation']
    assert paper['title'] == 'Adaptive Logit Adjustment Loss for Long-Tailed Visual Recognition'
    assert [a['family-names'] for a in paper['authors']] == ['Zhao', 'Chen', 'Tan', 'Huang', 'Zhu']
    assert paper['year'] == 2022 and 'AAAI' in paper['collection-title']


def test_changelog_names_the_version():
    text = (ROOT / 'CHANGELOG.md').read_text()
    assert f'## [{VERSION}]' in text and '## [Unreleased]' in text


def _run(cmd, **kw):
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=180, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def test_wheel_builds_and_installs_in_a_fresh_environment(tmp_path):
    "pip wheel (offline, no isolation) from a copy without the notebooks; installed without dependencies into a new venv."
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('setup.py', 'settings.ini', 'README.md', 'LICENSE'): shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / 'ala_paper', src / 'ala_paper', ignore=shutil.ignore_patterns('__pycache__'))
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-q',
          '-w', tmp_path / 'dist', f'{src}{os.sep}'])
    wheel, = (tmp_path / 'dist').glob('*.whl')
    assert wheel.name == f'ala_paper-{VERSION}-py3-none-any.whl'
    names = zipfile.ZipFile(wheel).namelist()
    assert 'ala_paper/losses.py' in names and not any(n.endswith('.ipynb') for n in names)
    assert any(n.endswith('licenses/LICENSE') or n.endswith('/LICENSE') for n in names)
    env_dir = tmp_path / 'venv'
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / ('Scripts/python.exe' if os.name == 'nt' else 'bin/python')
    site = Path(_run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']).strip())
    # torch & co. from this environment as a plain path (its .pth files, e.g. an editable ala_paper, are not run)
    import torch
    (site / 'outer.pth').write_text(str(Path(torch.__file__).parents[1]) + '\n')
    _run([py, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', wheel])
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = _run([py, '-c', 'import ala_paper, ala_paper.losses as L, torch; '
                          'loss = L.make_loss("ala", [100, 10, 1])(torch.zeros(3, 3), torch.tensor([0, 1, 2])); '
                          'print(ala_paper.__file__); print(ala_paper.__version__); print(float(loss))'],
               cwd=tmp_path, env=env)
    where, version, loss = out.split()
    assert Path(where).is_relative_to(site) and version == VERSION and float(loss) > 0
