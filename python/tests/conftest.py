import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import onnx
import pytest

from radiogate_model.data import default_data_dir

REPO = Path(__file__).resolve().parents[2]


def ops(model: onnx.ModelProto) -> Counter:
    """How many nodes of each operator type a model's graph holds."""
    return Counter(node.op_type for node in model.graph.node)


def load_script(relative: str) -> ModuleType:
    """A script of the repository (e.g. "scripts/bench/summarise.py"), imported as the module
    named after its file."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    if not (d / "test_batch").exists():
        pytest.skip(f"MiraBest not found at {d} (set MIRABEST_DIR)")
    return d
