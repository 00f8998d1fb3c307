"""The documentation runs: the API reference builds without a warning, and the tutorials execute.

The tutorials (``docs/tutorials/*.md``) are Markdown; their ```` ```python ```` blocks run in
order, in one namespace, from a working folder (``run_tutorial``). They run against the test
config's trained models in ``tests/test_workflow.py`` (slow: it needs the whole workflow run);
here the extractor and runner are unit-tested, and the tutorials' blocks are compiled.
"""

from __future__ import annotations

import linecache
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TUTORIALS = DOCS / "tutorials"

# An opening code fence: indentation (a block may sit inside a list item), three or more
# backticks or tildes, and an info string whose first word is the language.
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


class TutorialError(RuntimeError):
    """A tutorial block that failed; the message names the tutorial, block and first line."""


def tutorial_blocks(source: Path | str) -> list[str]:
    """The ```` ```python ```` blocks of a Markdown text or file, in order, as runnable code.

    A block runs when its fence's info string starts with the word ``python`` (```` ```python ````,
    ```` ~~~python ````); any other fence (```` ```bash ````, ```` ```text ````, ```` ```pycon ````,
    MyST directives like ```` ```{code-block} python ````) is skipped. A fence may be indented,
    e.g. inside a list item: that indentation is removed from the block's lines. A block ends at
    a fence of the same character at least as long as its opening one (CommonMark).

    Args:
        source: A Markdown file, or Markdown text (a ``str`` holding a line break).

    Raises:
        ValueError: A fence that is never closed (the message names its line).
    """
    if isinstance(source, str) and "\n" in source:
        text, name = source, "<markdown>"
    else:
        text, name = Path(source).read_text(), str(source)
    blocks: list[str] = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        number += 1
        if not opening or (opening["fence"][0] == "`" and "`" in opening["info"]):
            continue  # not a fence (a backtick fence's info string has no backtick)
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: list[str] = []
        start = number
        while number < len(lines) and not closing.match(lines[number]):
            line = lines[number]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            number += 1
        if number == len(lines):
            raise ValueError(f"{name}:{start}: code fence {fence!r} is never closed")
        number += 1
        words = opening["info"].split()
        if words and words[0] == "python":
            blocks.append("\n".join(body) + "\n")
    return blocks


def run_tutorial(path: Path, workdir: Path) -> dict[str, Any]:
    """Run a tutorial's Python blocks in order, in one namespace, from ``workdir``.

    The current directory is ``workdir`` while the blocks run and is restored afterwards,
    whatever happens. Tracebacks show each block's lines (file name ``<tutorial>[block N]``).

    Returns:
        The namespace the blocks ran in.

    Raises:
        TutorialError: A block failed (or did not compile); the message names the tutorial,
            the block's number (from 1) and its first line, and chains the original error.
        ValueError: A tutorial without any Python block.
    """
    path = Path(path)
    label = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    blocks = tutorial_blocks(path)
    if not blocks:
        raise ValueError(f"{label}: no ```python blocks to run")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        for number, block in enumerate(blocks, 1):
            filename = f"<{label}[block {number}]>"
            linecache.cache[filename] = (len(block), None, block.splitlines(True), filename)
            first = next((line.strip() for line in block.splitlines() if line.strip()), "")
            try:
                exec(compile(block, filename, "exec"), namespace)
            except Exception as error:
                raise TutorialError(
                    f"{label}, block {number} ({first!r}): {type(error).__name__}: {error}"
                ) from error
    finally:
        os.chdir(previous)
    return namespace


def test_api_reference_builds(tmp_path):
    # -W: any warning (a broken reST list in a docstring, a module that fails to import, a
    # bad toctree entry) fails the build; --keep-going reports all of them at once.
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        print(done.stderr)
    assert done.returncode == 0, done.stderr[-5000:]
    for page in ("index", "api/models", "api/tem", "api/xrd", "api/recipes"):
        assert (tmp_path / f"{page}.html").is_file(), page
    for tutorial in sorted(TUTORIALS.glob("*.md")):
        assert (tmp_path / "tutorials" / f"{tutorial.stem}.html").is_file(), tutorial.name


MARKDOWN = """\
# A tutorial

```python
x = 1
```

Shell commands are shown, never run:

```bash
rm -rf /
```

```text
x = 1  # output, not code
```

1. A step inside a list item:

   ```python
   if x:
       y = x + 1
   ```

~~~~python
z = '''
```
'''
~~~~

```{code-block} python
not_run = True
```
"""


def test_tutorial_blocks_keep_only_python_blocks_in_order():
    assert tutorial_blocks(MARKDOWN) == [
        "x = 1\n",
        "if x:\n    y = x + 1\n",
        "z = '''\n```\n'''\n",
    ]


def test_tutorial_blocks_read_a_file(tmp_path):
    path = tmp_path / "t.md"
    path.write_text(MARKDOWN)
    assert tutorial_blocks(path) == tutorial_blocks(MARKDOWN)


def test_an_unclosed_fence_is_refused_with_its_line():
    with pytest.raises(ValueError, match=r"<markdown>:3: code fence '```' is never closed"):
        tutorial_blocks("# T\n\n```python\nx = 1\n")


def write_tutorial(tmp_path: Path, *blocks: str) -> Path:
    path = tmp_path / "tutorial.md"
    path.write_text("".join(f"Step {i}:\n\n```python\n{b}```\n\n" for i, b in enumerate(blocks)))
    return path


def test_run_tutorial_runs_blocks_in_one_namespace_in_the_workdir(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    path = write_tutorial(
        tmp_path,
        "from pathlib import Path\nx = 41\n",
        "Path('out.txt').write_text(str(x + 1))\n",
    )
    before = Path.cwd()
    namespace = run_tutorial(path, workdir)
    assert Path.cwd() == before
    assert (workdir / "out.txt").read_text() == "42" and namespace["x"] == 41


def test_run_tutorial_names_the_tutorial_block_and_first_line(tmp_path):
    path = write_tutorial(tmp_path, "x = 1\n", "\ny = x + 1\nraise KeyError('missing')\n")
    before = Path.cwd()
    with pytest.raises(TutorialError) as caught:
        run_tutorial(path, tmp_path)
    assert Path.cwd() == before
    message = str(caught.value)
    assert "tutorial.md, block 2 ('y = x + 1'): KeyError: 'missing'" in message
    assert isinstance(caught.value.__cause__, KeyError)


def test_run_tutorial_reports_a_syntax_error_and_an_empty_tutorial(tmp_path):
    with pytest.raises(TutorialError, match=r"block 1 \('x = \(1'\): SyntaxError"):
        run_tutorial(write_tutorial(tmp_path, "x = (1\n"), tmp_path)
    empty = tmp_path / "empty.md"
    empty.write_text("# Nothing\n\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="no ```python blocks"):
        run_tutorial(empty, tmp_path)


def test_tutorials_compile():
    # Running them needs the workflow's models (tests/test_workflow.py); their syntax does not.
    for path in sorted(TUTORIALS.glob("*.md")):
        blocks = tutorial_blocks(path)
        assert blocks, f"{path.name}: no ```python blocks"
        for number, block in enumerate(blocks, 1):
            compile(block, f"{path.name}[block {number}]", "exec")
