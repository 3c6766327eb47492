import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MQ_DEPLOY_SHARED", ROOT.parent / "shared"))
REF_MODEL = SHARED / "models" / "mamba-ref-29m"
DATA_DIR = SHARED / "data"
NEOX_TOKENIZER = DATA_DIR / "tokenizer" / "gpt-neox-20b.json"


def _fashion_mnist():
    """The Fashion-MNIST folder the product finds under the tests' MQ_DEPLOY_DATA_DIR (the shared data folder, see
    _data_dir) or at the Debian package's path, holding the training and test files (.gz or not); None without."""
    from mq_deploy.vision.data import DEFAULT_DIR, FILES

    for c in (DATA_DIR / "fashion-mnist", DEFAULT_DIR):
        if all((c / f).is_file() or (c / f"{f}.gz").is_file() for pair in FILES.values() for f in pair):
            return c
    return None


FASHION_MNIST = _fashion_mnist()
needs_fashion_mnist = pytest.mark.skipif(
    FASHION_MNIST is None, reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist, or its four "
    f"idx files in {DATA_DIR / 'fashion-mnist'})")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
    if DATA_DIR.is_dir():
        monkeypatch.setenv("MQ_DEPLOY_DATA_DIR", str(DATA_DIR))


@pytest.fixture
def signals_as_a_terminal_gives_them():
    """Ctrl-C raising KeyboardInterrupt and SIGTERM at its default, whatever this process inherited: a background job
    of a non-interactive shell (as a CI script may start the tests) begins with SIGINT ignored, and Python then leaves
    it ignored, so a test's SIGINT would do nothing."""
    import signal

    prev = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
            signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}
    yield
    for s, h in prev.items():
        signal.signal(s, h)
