"""The documentation site: its examples run and keep their promises, it builds without a
warning, and no example reaches into a private module.

Every ```python block of an example page runs, page by page and in order; the blocks of
one page share a namespace, as a reader running them one after another would. A block
directly preceded by ``<!-- skip -->`` is illustrative only and is not run. The examples
assert the numbers their prose claims, so a page whose results drift fails here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# The pages whose examples run: the README's in the default suite, the other pages' (up to
# three minutes each on 2 slow cores) in `make test-all`. All are run-bound (fits of
# hundreds of steps), so they compile with optimisation (`optimized`, conftest.py).
EXAMPLE_PAGES = [
    pytest.param("../README.md", marks=pytest.mark.optimized),  # a 200-step fit: run-bound
    *(pytest.param(p, marks=[pytest.mark.slow, pytest.mark.optimized])
      for p in ("index.md", "byo-ode.md", "byo-pde.md", "online.md")),
]

SKIP_MARKER = "<!-- skip -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<info>[\w+-]*)")


def code_blocks(text: str) -> list[tuple[int, str, str, bool]]:
    """``(line, language, source, skipped)`` of every fenced block of a Markdown page:
    ``line`` is the 1-based line of the opening fence, ``source`` is dedented, and
    ``skipped`` says whether the last non-blank line before the fence is `SKIP_MARKER`."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, indent = m["fence"], m["indent"]
        prev = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise ValueError(f"unclosed code fence opened at line {i + 1}")
        source = textwrap.dedent("\n".join(body))
        blocks.append((i + 1, m["info"].lower(), source, prev == SKIP_MARKER))
        i = j + 1
    return blocks


def test_code_blocks_parser():
    """The parser finds blocks, their languages and skip markers (a wrong parser would
    silently run nothing)."""
    page = (
        "text\n\n```python\nx = 1\n```\n<!-- skip -->\n\n```python\ny = 2\n```\n```bash\nls\n```\n"
    )
    assert code_blocks(page) == [
        (3, "python", "x = 1", False),
        (8, "python", "y = 2", True),
        (11, "bash", "ls", False),
    ]


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_page_examples_run(page, monkeypatch, tmp_path):
    """Run every non-skipped python block of ``page`` in order, in one namespace."""
    blocks = [b for b in code_blocks((DOCS / page).read_text()) if b[1] == "python"]
    runnable = [(line, src) for line, _, src, skipped in blocks if not skipped]
    assert runnable, f"{page} has no runnable python example"
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    # the page runs as a module of its own, registered like a script's ``__main__`` would
    # be (dataclasses and Equinox look classes' modules up in ``sys.modules``)
    module = types.ModuleType(f"docs_{Path(page).stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for line, source in runnable:
        # dont_inherit: this file's ``from __future__ import annotations`` must not leak in
        code = compile(source, f"docs/{page}:{line}", "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - running the documented examples is the test


_PRIVATE = [
    re.compile(r"\bfrom\s+scilayers(\.\w+)*\._\w*\s+import\b"),  # from scilayers.x._y import
    re.compile(r"\bimport\s+scilayers(\.\w+)*\._\w*"),  # import scilayers.x._y
    re.compile(r"\b(sl|scilayers)(\.[A-Za-z]\w*)*\._\w*"),  # sl.x._y, scilayers._z
]


def test_no_private_names_in_examples():
    """No code block of any page imports or uses a private scilayers module or name."""
    offenders = []
    for page in sorted(DOCS.rglob("*.md")):
        for line, _, source, _ in code_blocks(page.read_text()):
            for k, text in enumerate(source.splitlines()):
                if any(p.search(text) for p in _PRIVATE):
                    offenders.append(f"{page.relative_to(ROOT)}:{line + 1 + k}: {text.strip()}")
    assert not offenders, "examples use private names:\n" + "\n".join(offenders)


def test_private_name_check_catches_private_imports():
    """The patterns above flag what they must (and not a public name)."""
    bad = ["from scilayers.models._base import x", "sl.hybrid._sensitivity.sensitivity",
           "import scilayers.solvers._etdrk", "scilayers._bench"]  # fmt: skip
    good = ["from scilayers.models import AbstractModel", "sl.hybrid.orthogonalize(g, j)",
            "self._term()", "sl.params.values(m)"]  # fmt: skip
    assert all(any(p.search(t) for p in _PRIVATE) for t in bad)
    assert not any(p.search(t) for p in _PRIVATE for t in good)


def _missing_docs_tools() -> list[str]:
    mods = ["mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python",
            "griffe_public_redundant_aliases"]  # fmt: skip
    out = []
    for m in mods:
        try:
            if importlib.util.find_spec(m) is None:
                out.append(m)
        except ModuleNotFoundError:
            out.append(m)
    return out


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` succeeds: no broken link, no unknown page, no API object
    that fails to resolve, no page missing from the navigation."""
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(f"documentation tools not installed ({', '.join(missing)}); "
                    f"pip install -e '.[docs]'")  # fmt: skip
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "index.html").exists()
    for page in ["byo-ode", "byo-pde", "adding-a-study", "design", "api/params"]:
        assert (tmp_path / page / "index.html").exists(), f"{page} was not built"
    # the API reference documents every public name of every subpackage it covers
    for name in API_MODULES:
        html = (tmp_path / "api" / name / "index.html").read_text()
        anchors = set(re.findall(rf'id="scilayers\.{name}\.([A-Za-z]\w*)"', html))
        missing = sorted(_public_names(importlib.import_module(f"scilayers.{name}")) - anchors)
        assert not missing, f"docs/api/{name}.md does not document {missing}"


API_MODULES = ["params", "models", "solvers", "hybrid", "training", "baselines", "metrics",
               "uq", "experiments"]  # fmt: skip


def _public_names(module) -> set[str]:
    """The public names a subpackage exports: everything in its namespace without a leading
    underscore, except submodules, ``from __future__`` features and objects imported from
    outside scilayers (``Path``, ``importlib``)."""
    out = set()
    for name, obj in vars(module).items():
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        if type(obj).__module__ == "__future__":  # from __future__ import annotations
            continue
        if callable(obj) and not getattr(obj, "__module__", "").startswith("scilayers"):
            continue
        out.add(name)
    return out
