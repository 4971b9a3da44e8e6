from pathlib import Path

import pytest

from radiogate_model.data import default_data_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    if not (d / "test_batch").exists():
        pytest.skip(f"MiraBest not found at {d} (set MIRABEST_DIR)")
    return d
