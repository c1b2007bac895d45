"""The layers, checked from the source: imports parsed with ast (function-level ones too)
over fastmae/ and kernels/, so an arrow that breaks the design fails here, not in review.

Rules (GUIDE.md, section 2): no import cycles; kernels/ imports nothing from fastmae;
settings/ imports nothing else from fastmae; perf/ imports neither bench nor train;
train never reaches bench; models never reaches train. And the allowed values of a run
setting are spelled in fastmae/settings/choices.py only."""
import ast
import re
from pathlib import Path

import pytest

from fastmae.settings import CHOICES

ROOT = Path(__file__).resolve().parents[1]
CHOICES_FILE = "fastmae/settings/choices.py"


# ---------------------------------------------------------------- the import graph

def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under root/fastmae and root/kernels (which ships
    as fastmae.kernels)."""
    mods = {}
    for top, prefix in (("fastmae", ("fastmae",)), ("kernels", ("fastmae", "kernels"))):
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root / top).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(prefix + parts)] = path
    return mods


def _imports(path: Path, name: str, mods: dict[str, Path]) -> set[str]:
    """The fastmae modules `name` (the module in `path`) imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()

    def known(dotted: str) -> str | None:  # the longest known module prefix
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in mods:
                return ".".join(parts[:n])
        return None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(filter(None, (known(a.name) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # `from pkg import submodule` points at the submodule
                hit = known(f"{target}.{a.name}") if f"{target}.{a.name}" in mods else known(target)
                if hit:
                    out.add(hit)
    out.discard(name)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = module_names(root)
    return {name: _imports(path, name, mods) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _in(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every broken layering rule, one line each."""
    out = [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    for src, deps in sorted(graph.items()):
        for dst in sorted(deps):
            if _in(src, "fastmae.kernels") and not _in(dst, "fastmae.kernels"):
                out.append(f"kernels imports fastmae: {src} -> {dst}")
            if _in(src, "fastmae.settings") and not _in(dst, "fastmae.settings"):
                out.append(f"settings imports the rest of fastmae: {src} -> {dst}")
    # What a layer may not reach, directly or through other modules.
    forbidden = (("fastmae.train", ("fastmae.bench",)), ("fastmae.models", ("fastmae.train",)),
                 ("fastmae.perf", ("fastmae.bench", "fastmae.train")))
    for layer, banned in forbidden:
        for src in sorted(m for m in graph if _in(m, layer)):
            for dst in sorted(reachable(graph, src)):
                if any(_in(dst, b) for b in banned):
                    out.append(f"{layer} reaches {dst} (from {src})")
    return out


def test_layers_hold():
    graph = import_graph()
    assert "fastmae.train.loop" in graph and "fastmae.kernels.loss" in graph  # the scan saw the tree
    assert "fastmae.settings" in graph["fastmae.train.loop"] or any(
        _in(d, "fastmae.settings") for d in graph["fastmae.train.loop"])
    assert violations(graph) == []


def _tree(tmp_path, files: dict[str, str]) -> Path:
    for rel, text in {"fastmae/__init__.py": "", "kernels/__init__.py": "", **files}.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_checker_finds_cycles_and_wrong_arrows(tmp_path):
    root = _tree(tmp_path, {
        "fastmae/interop/__init__.py": "",
        "fastmae/interop/a.py": "from . import b\n",
        "fastmae/interop/b.py": "def f():\n    from .a import x\n",  # a function-level import counts
        "fastmae/train/__init__.py": "",
        "fastmae/train/loop.py": "from ..perf import flops\n",
        "fastmae/perf/__init__.py": "",
        "fastmae/perf/flops.py": "from ..bench.harness import run\n",
        "fastmae/bench/__init__.py": "",
        "fastmae/bench/harness.py": "",
        "fastmae/settings/__init__.py": "from fastmae.models import mae\n",
        "fastmae/models/__init__.py": "",
        "fastmae/models/mae.py": "import fastmae.train.loop\n",
        "kernels/loss.py": "from fastmae.ops import dispatch\n",
        "fastmae/ops/__init__.py": "",
        "fastmae/ops/dispatch.py": "",
    })
    found = "\n".join(violations(import_graph(root)))
    assert "import cycle: fastmae.interop.a <-> fastmae.interop.b" in found
    assert "fastmae.train reaches fastmae.bench.harness (from fastmae.train.loop)" in found
    assert "fastmae.perf reaches fastmae.bench.harness" in found
    assert "fastmae.models reaches fastmae.train.loop" in found
    assert "settings imports the rest of fastmae: fastmae.settings -> fastmae.models.mae" in found
    assert "kernels imports fastmae: fastmae.kernels.loss -> fastmae.ops.dispatch" in found


def test_checker_passes_a_clean_tree(tmp_path):
    root = _tree(tmp_path, {"fastmae/train/__init__.py": "from .loop import run\n",
                            "fastmae/train/loop.py": "from .. import settings\n",
                            "fastmae/settings.py": "X = 1\n"})
    assert violations(import_graph(root)) == []


# ---------------------------------------------------------------- allowed values, spelled once

# Values that name one setting's options ("auto" is everyone's default, so it says nothing).
_VALUE_SETS = [set(v) - {"auto"} for v in CHOICES.values()]
_HELP_LIST = re.compile(r"[\w.:-]+(?:\s*\|\s*[\w.:-]+)+")


def _strings(nodes) -> set:
    return {e.value for e in nodes if isinstance(e, ast.Constant) and isinstance(e.value, str)}


def _spelled_choices(text: str, where: str, mappings: bool = True) -> list[str]:
    """Collections of two or more values of one setting, (with `mappings`) dicts keyed by
    them, and `a | b` help-text lists of them."""
    out = []
    for node in ast.walk(ast.parse(text, where)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = _strings(node.elts)
            if any(len(items & s) >= 2 for s in _VALUE_SETS):
                out.append(f"{where}:{node.lineno}: {sorted(items)}")
        elif mappings and isinstance(node, ast.Dict) and all(k is not None for k in node.keys):
            keys = _strings(node.keys)  # a table per value, e.g. precision -> dtype
            if len(keys) == len(node.keys) and len(keys - {"auto"}) >= 2 and \
                    any(keys - {"auto"} <= s for s in _VALUE_SETS):
                out.append(f"{where}:{node.lineno}: {sorted(keys)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for m in _HELP_LIST.finditer(node.value):
                words = {w.strip() for w in m.group().split("|")}
                if any(len(words & s) >= 2 for s in _VALUE_SETS):
                    out.append(f"{where}:{node.lineno}: {m.group()!r}")
    return out


def test_allowed_values_are_spelled_in_settings_only():
    found = []
    for top in ("fastmae", "kernels"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != CHOICES_FILE:  # settings/ may map a value to what it means (a dtype)
                found += _spelled_choices(path.read_text(encoding="utf-8"), rel,
                                          mappings=not rel.startswith("fastmae/settings/"))
    assert found == []
    # and the one place that spells them does
    assert _spelled_choices((ROOT / CHOICES_FILE).read_text(), CHOICES_FILE)


@pytest.mark.parametrize("snippet", [
    'KERNELS = ("auto", "triton", "torch")\n',
    'if p not in ["bf16", "fp16", "fp32"]:\n    pass\n',
    'ok = {"flash", "sdpa"}\n',
    'amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p)\n',
    'fn = {"auto": pick, "flash": flash, "sdpa": sdpa}\n',
    'HELP = "auto | dali | torch"\n',
    'f(help=f"precision: bf16|fp32 (default {x})")\n',
])
def test_choice_check_catches_a_second_spelling(snippet):
    assert _spelled_choices(snippet, "x.py")


@pytest.mark.parametrize("snippet", [
    'POOLS = ("cls", "avg")\n',
    'v = {"torch": "2.5", "triton": "3.1", "python": "3.11"}\n',
    'if device.type == "cuda":\n    pass\n',
    'msg = "use --precision fp32"\n',
])
def test_choice_check_leaves_other_strings_alone(snippet):
    assert _spelled_choices(snippet, "x.py") == []
