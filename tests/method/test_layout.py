"""The shape of the code: the method at the top level, no import cycles, stages that meet only through the
shared foundations, and the folders around the method importing one way (app/ -> labelling/ -> the method;
refineg.py -> levers/ -> the method).

Every import counts: at the top, inside functions and under `if TYPE_CHECKING:`, since each one
is a dependency a reader has to follow.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("formats", "client", "servers", "bench", "app", "labelling", "levers")
METHOD = {  # the top level: the paper's parts (and self-training, marked as not in the paper)
    *("refineg", "data", "crf", "encoding", "tagger", "synth", "selftrain", "uncertainty", "refinement"),
    *("demos", "grounding", "images", "eval", "llm"),
}

# The stages of the method, each a group of modules; one stage may not import another's modules.
# Everything else they use is a foundation (data, crf, encoding, images, llm, client/, formats/,
# eval, uncertainty) or the orchestration on top (refineg and the application, app/).
STAGES = {
    "training": {"synth", "tagger", "selftrain"},
    "refinement": {"refinement"},
    "grounding": {"demos", "grounding"},
}
FOUNDATIONS = {"data", "crf", "encoding", "images", "llm", "eval", "uncertainty", "formats", "client"}


def module_files() -> dict[str, Path]:
    files = {p.stem: p for p in ROOT.glob("*.py")}
    for package in PACKAGES:
        for p in (ROOT / package).glob("*.py"):
            name = package if p.stem == "__init__" else f"{package}.{p.stem}"
            files[name] = p
    return files


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions_and_type_checking(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import data\n"
        "def f():\n    from formats import ccks\n"
    )
    assert imports_of(src, {"data", "formats", "formats.ccks", "tagger"}) == {
        "data",
        "formats",
        "formats.ccks",
    }


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_stages_import_each_other_only_through_the_foundations():
    edges = graph()
    group = {m: stage for stage, members in STAGES.items() for m in members}
    crossing = [
        (m, dep)
        for m, deps in edges.items()
        if m in group
        for dep in deps
        if dep in group and group[dep] != group[m]
    ]
    assert crossing == []
    foundations = {m for m in edges if m.split(".")[0] in FOUNDATIONS}
    upward = [(m, dep) for m in foundations for dep in edges[m] if dep in group]
    assert upward == []


@pytest.mark.parametrize("outside", ["bench", "servers", "tests"])
def test_the_method_imports_no_benchmark_or_test_infrastructure(outside):
    edges = graph()
    method = [m for m in edges if "." not in m and m not in PACKAGES]
    assert [(m, d) for m in method for d in edges[m] if d.split(".")[0] == outside] == []


def test_the_top_level_holds_only_the_method():
    assert {p.stem for p in ROOT.glob("*.py")} == METHOD


def outside(edges: dict[str, set[str]], modules: set[str], folders: tuple[str, ...]) -> set[tuple[str, str]]:
    """The imports from `modules` into the packages `folders`."""
    return {(m, d) for m in modules for d in edges[m] if d.split(".")[0] in folders}


def test_the_method_imports_the_application_and_the_labelling_loop_only_where_stated():
    """Only refineg.py imports app/ (in this step of issue 36 it still runs the application's parts): any
    other import of the product from the method fails here."""
    edges = graph()
    found = outside(edges, METHOD, ("app", "labelling"))
    assert {(m, d.split(".")[0]) for m, d in found} == {("refineg", "app")}


def test_the_scorer_vendors_with_the_data_model_alone():
    """eval.py scores samples and reads no file: its command line (app/score.py) reads them with formats/
    and labelling's export reader, so a porter copying the scorer copies data.py with it and nothing else."""
    edges = graph()
    assert edges["eval"] == {"data"} and edges["data"] == set()


def test_only_the_pipeline_uses_the_levers_and_they_use_only_the_method():
    """levers/ holds what goes beyond the paper (synthesis's filters): refineg.py passes them to the stages
    and no other method module imports them, so the method reads and runs without the folder; the levers
    import the method and its foundations, never the application, the labelling loop, bench or servers."""
    edges = graph()
    assert {(m, d.split(".")[0]) for m, d in outside(edges, METHOD, ("levers",))} == {("refineg", "levers")}
    levers = {m for m in edges if m.split(".")[0] == "levers"}
    assert levers and outside(edges, levers, ("app", "labelling", "bench", "servers")) == set()


def test_the_folders_import_one_way():
    """app/ uses labelling/, never the reverse; formats/ knows no other layout's reader, and only its command
    line (`python -m formats`) passes labelling's, so the package formats/ stays below labelling/."""
    edges = graph()
    package = {m for m in edges if m.split(".")[0] in ("labelling", "formats") and m != "formats.__main__"}
    assert outside(edges, package, ("app",)) == set()
    formats = {m for m in edges if m.split(".")[0] == "formats" and m != "formats.__main__"}
    assert outside(edges, formats, ("labelling",)) == set()


def test_the_readmes_reading_order_names_every_method_file_with_its_line_count():
    """The README's reading order ("`data.py` 294 and ...") is a reader's map: each method file once, with
    the number of lines it has now."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("The method is the 14 files of the top level")
    order = text[start : text.index("which calls the stages in that order", start)]
    counted = dict(re.findall(r"`(\w+\.py)` (\d+)", order))
    method = {p.name for p in ROOT.glob("*.py")}
    assert set(counted) == method
    for name, lines in counted.items():
        assert int(lines) == len((ROOT / name).read_text(encoding="utf-8").splitlines()), name
