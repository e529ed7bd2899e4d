"""The commands the docs show run as written (docs/check_commands.py; the slow ones only there)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_commands", ROOT / "docs" / "check_commands.py")
check_commands = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_commands)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    return folder, check_commands.scratch(folder)


def test_evaluation_inference_paper_data_and_real_phantom_docs_run_as_written(scratch):
    docs = [ROOT / "docs" / name for name in ("evaluation.md", "inference.md", "paper.md", "data.md",
                                              "real_phantom.md")]
    assert check_commands.check(docs, fast=True, folder=scratch) == []


def test_a_doc_that_lies_is_caught(tmp_path, scratch):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```\nlungseg-predict MODEL_OR_RUN INPUT [--out DIR] [--no-such-option]\n```\n\n"
        "```python\nimport keras\nkeras.models.load_model('runs/nowhere/model.keras')\n```\n\n"
        "```bash\npython -m lungseg.data check LUS --size 64 32\n```\n"
    )
    problems = check_commands.check([doc], fast=True, folder=scratch)
    assert len(problems) == 2, problems
    assert problems[0] == "doc.md: --no-such-option: not an option of lungseg-predict MODEL_OR_RUN INPUT"
    assert problems[1].startswith("doc.md: python block failed: ValueError")
