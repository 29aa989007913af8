"""Every code block of README.md and docs/*.md runs as written, on a CPU.

The convention (README.md, "Documentation"):
- a ```python block runs unless the line before it (blank lines aside) is
  ``<!-- not run: REASON -->``; the blocks of one file run in order, in one namespace;
- a ```bash block runs only when the line before it is ``<!-- run -->``, with bash -e in a
  fresh temporary folder that links this checkout's bench/ and examples/ (so commands
  written for the repository's root run, and what they write stays in the folder);
- other blocks (text, output) are not run.

They run in a fresh interpreter, with this checkout first on PYTHONPATH and without the
test suite's TRITON_INTERPRET=1, as a user's would: ``backend="auto"`` is the torch
backend on a CPU, the Triton kernels on a GPU. One interpreter runs every file's python
blocks (each file in a namespace of its own), so torch is imported once.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: .+ -->$")
RUN = "<!-- run -->"


def blocks(path: Path) -> list[dict]:
    """The fenced blocks of a page: language, first line number, code, and the marker
    before it ("not run", "run" or None)."""
    found, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{path.name}:{i + 1}: a code block is never closed")
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = "not run" if NOT_RUN.match(before) else "run" if before == RUN else None
        if before.startswith("<!-- not run") and marker is None:
            raise AssertionError(f"{path.name}:{i}: write the marker as <!-- not run: REASON -->")
        found.append(dict(language=opening.group(1), line=i + 2, code="\n".join(lines[i + 1:end]), marker=marker))
        i = end + 1
    return found


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


RUNNER = r"""
import json, sys, traceback
results = {}
for page, page_blocks in json.load(sys.stdin).items():
    namespace = {"__name__": "__docs__"}
    results[page] = None
    for block in page_blocks:
        try:
            exec(compile(block["code"], f"{page}:{block['line']}", "exec"), namespace)
        except BaseException:
            results[page] = f"the block at {page}:{block['line']} failed:\n{traceback.format_exc()}"
            break
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def python_results(tmp_path_factory):
    """Run every page's python blocks in one fresh interpreter; page name -> None or the error."""
    todo = {p.name: [b for b in blocks(p) if b["language"] == "python" and b["marker"] != "not run"]
            for p in PAGES}
    done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(todo), capture_output=True, text=True,
                          env=_env(), cwd=tmp_path_factory.mktemp("docs"), timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run(page, python_results):
    assert python_results[page.name] is None, python_results[page.name]


RUN_BASH = [(p, b) for p in PAGES for b in blocks(p) if b["language"] == "bash" and b["marker"] == "run"]


@pytest.mark.parametrize("page,block", RUN_BASH, ids=[f"{p.name}:{b['line']}" for p, b in RUN_BASH])
def test_marked_bash_blocks_run(page, block, tmp_path):
    for name in ("bench", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    done = subprocess.run(["bash", "-e", "-c", block["code"]], capture_output=True, text=True, env=_env(),
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, f"{page.name}:{block['line']}\n{done.stdout}\n{done.stderr}"


def test_the_convention_is_followed():
    """The README's quick start is run (not marked away) and chooses the device once; no
    block that runs calls .cuda() or makes a CUDA generator, which a CPU machine cannot."""
    quick_start = [block for block in blocks(ROOT / "README.md") if block["language"] == "python"][0]
    assert quick_start["marker"] is None
    assert "device = \"cuda\" if torch.cuda.is_available() else \"cpu\"" in quick_start["code"]
    for page in PAGES:
        for block in blocks(page):
            if block["language"] == "python" and block["marker"] is None:
                assert ".cuda()" not in block["code"] and 'Generator("cuda")' not in block["code"], (
                    f"{page.name}:{block['line']}: a CPU machine cannot run this; choose the device once")


def test_the_ci_command_is_the_readme_line():
    """.ci/run runs the line after the marker; it must be there, and install what the tests import."""
    text = (ROOT / "README.md").read_text()
    line = text.split("<!-- ci: test command -->\n```bash\n", 1)[1].split("\n", 1)[0]
    assert line.startswith("pip install torch==") and line.endswith("python -m pytest")
    assert '".[test,bench,cli]"' in line
