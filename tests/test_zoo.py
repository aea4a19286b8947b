"The model zoo: the committed figures/model_zoo.md is what `python -m ala_paper.zoo` makes now; mistakes are one line."
import subprocess, sys
from pathlib import Path

import pytest

from ala_paper.zoo import write_zoo

ROOT = Path(__file__).resolve().parent.parent


def test_committed_zoo_is_current(tmp_path):
    made = write_zoo(ROOT / 'figures' / 'runs', tmp_path / 'zoo.md')
    assert made.read_text() == (ROOT / 'figures' / 'model_zoo.md').read_text(), \
        'figures/model_zoo.md is stale: run python -m ala_paper.zoo and commit it'


@pytest.mark.parametrize('args, says', [(['--runs-dir', 'no/such/runs'], 'does not exist'),
                                        (['--out', 'figures'], 'is a folder'),
                                        (['--runs-dir', 'README.md'], 'is a file')])
def test_cli_mistakes_are_one_line(tmp_path, args, says):
    r = subprocess.run([sys.executable, '-m', 'ala_paper.zoo', *args], cwd=ROOT, capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: ') and says in lines[0], r.stderr
    assert not list(tmp_path.iterdir())
