import os

# Idle OpenMP threads sleep instead of spinning, as in .ci/run: tests run beside other processes (notebook tests,
# a background training run), and spinning threads slow everyone several-fold. Set before any test imports torch.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s (CI runs it; deselect with -m 'not slow')")
