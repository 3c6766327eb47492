import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MQ_DEPLOY_SHARED", ROOT.parent / "shared"))
REF_MODEL = SHARED / "models" / "mamba-ref-29m"
DATA_DIR = SHARED / "data"
NEOX_TOKENIZER = DATA_DIR / "tokenizer" / "gpt-neox-20b.json"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
    if DATA_DIR.is_dir():
        monkeypatch.setenv("MQ_DEPLOY_DATA_DIR", str(DATA_DIR))
