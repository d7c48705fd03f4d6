"""docs/walkthrough.md runs and prints what it shows.

Every ```python block of the page is executed in order in one shared namespace, from the repository root,
and what it prints is compared with the ```text block right after it (trailing whitespace of each line and
blank lines at either end do not count). A text block whose first line is `(output varies)` shows numbers
of a trained model, which differ a little between machines: its block still has to run, its output is not
compared. The page trains a small tagger for a few epochs: about 10 s on a 2-core CPU.
"""

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "walkthrough.md"
VARIES = "(output varies)"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def normalise(text: str) -> str:
    """The text without trailing whitespace on each line and without blank lines at either end."""
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def examples(page: str) -> list[tuple[int, str, str | None]]:
    """(line of the code block, code, the text block right after it or None) for every python block."""
    fences = [(page.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in FENCE.finditer(page)]
    out = []
    for k, (line, lang, body) in enumerate(fences):
        if lang == "python":
            after = fences[k + 1] if k + 1 < len(fences) else None
            out.append((line, body, after[2] if after is not None and after[1] == "text" else None))
    return out


def test_every_code_block_has_its_output():
    blocks = examples(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 9, f"{PAGE}: expected the walkthrough's code blocks, found {len(blocks)}"
    missing = [f"block {n} (line {line})" for n, (line, _, out) in enumerate(blocks, 1) if out is None]
    assert not missing, f"{PAGE}: a ```python block needs a ```text block right after it: {missing}"


def test_walkthrough_prints_what_it_shows(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()  # the page sets one thread; the rest of the suite keeps its own
    namespace: dict = {"__name__": "walkthrough"}
    failures = []
    try:
        for n, (line, code, shown) in enumerate(examples(PAGE.read_text(encoding="utf-8")), 1):
            where = f"docs/walkthrough.md, block {n} (line {line})"
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(code, where, "exec"), namespace)
            except Exception as err:
                pytest.fail(f"{where} raised {type(err).__name__}: {err}\nprinted so far:\n{out.getvalue()}")
            if shown is None or normalise(shown).split("\n")[0].strip() == VARIES:
                continue
            want, got = normalise(shown), normalise(out.getvalue())
            if want != got:
                failures.append(f"{where}: the output differs\n--- expected\n{want}\n--- got\n{got}")
    finally:
        torch.set_num_threads(threads)
    assert not failures, "\n\n".join(failures)
