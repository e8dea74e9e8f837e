"""A built-in English corpus harvested from Python's own standard library.

`lmforge pretrain` must work with no data and no network, yet a model trained on lorem ipsum
teaches nothing. Every Python installation ships a few megabytes of carefully written English:
the docstrings and comments of the standard library (collected with `ast`, one document per
module, its texts in source order separated by blank lines), the docstrings of the modules
compiled into the interpreter, and the language reference topics that `pydoc` shows. They run
through the default `Cleaner` and are cached as JSONL (`{"text": ..., "source": ...}` per line),
so the work happens once per Python version. The build is deterministic: files and names are
visited in sorted order and nothing depends on hash randomisation.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import importlib
import inspect
import json
import os
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.text.clean import CleanConfig, Cleaner
from lmforge.text.corpus import Document
from lmforge.utils.io import atomic_path, atomic_write_json, read_json

# Bump when the harvesting rules change so stale caches are rebuilt rather than reused.
CONTENT_VERSION = 2

# Test suites, IDLE, 2to3 fixers and demos are code-about-code or GUI strings, not prose;
# encodings is ~120 near-identical generated codec modules; third-party packages are not ours.
_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "encodings",
    "ensurepip",
    "pydoc_data",
}
# AST node signatures and a C-API example module are not prose.
_SKIP_COMPILED = {"_ast", "xxsubtype"}
_SKIP_FILES = {"this.py", "antigravity.py", "__hello__.py", "__phello__.py"}  # rot13 text, jokes, stubs

_COMMENT_LINE_RE = re.compile(r"\n[ \t]*#([^\n]*)")
_DEF_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# Statements whose bodies may hold definitions (TryStar and Match exist only on newer Pythons).
_COMPOUND_NAMES = ("If", "For", "AsyncFor", "While", "Try", "TryStar", "With", "AsyncWith", "Match")
_COMPOUND_NODES = tuple(
    getattr(ast, n) for n in (*_COMPOUND_NAMES, "ExceptHandler", "match_case") if hasattr(ast, n)
)
# Licence headers, editor modelines and tool pragmas are boilerplate, not documentation.
_BOILERPLATE = (
    "copyright",
    "license",
    "licence",
    "all rights reserved",
    "author:",
    "-*-",
    "noqa",
    "type:",
    "pragma",
    "fmt:",
)
# A comment line that is really commented-out code: assignments, calls, statements, brackets.
_CODE_LINE_RE = re.compile(
    r"^\s*(?:(?:def|class|import|from|return|if|elif|else|for|while|try|except|with|print|raise|assert)\b"
    r"|[\w.\[\]]+\s*[-+*/]?=[^=]|[\w.]+\(.*\)\s*$|[\])}:]\s*$|>>>)"
)
_WORD_RE = re.compile(r"[A-Za-z]{2,}")
_MIN_WORDS = 4  # shorter comment blocks and docstrings are labels ("Helper."), not text


def cache_dir() -> Path:
    """$LMFORGE_CACHE, else ~/.cache/lmforge: one place for artifacts that are costly to rebuild."""
    env = os.environ.get("LMFORGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmforge"


def _cache_name() -> str:
    impl = sys.implementation.name
    ver = ".".join(str(v) for v in sys.version_info[:3])
    return f"builtin-corpus-{impl}{ver}-v{CONTENT_VERSION}.jsonl"


def _stdlib_root() -> Path:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not (root / "os.py").is_file():
        raise LmforgeError(
            f"Python's standard library sources were not found in {root}, so the built-in corpus cannot "
            "be built; pass your own text with --data"
        )
    return root


def stdlib_files(root: Path) -> list[Path]:
    """The standard library's .py files worth reading, in a stable (sorted, POSIX path) order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so skipped trees (the large test suite) are never even listed.
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith((".", "config-"))]
        for name in filenames:
            if name.endswith(".py") and name not in _SKIP_FILES and not name.startswith("_sysconfigdata"):
                files.append(Path(dirpath, name))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _definitions(body: list[ast.stmt]) -> list[ast.AST]:
    """Functions and classes at any depth, visiting only statement bodies (cheaper than ast.walk)."""
    found: list[ast.AST] = []
    stack = [body]
    while stack:
        for node in stack.pop():
            if isinstance(node, _DEF_NODES):
                found.append(node)
                stack.append(node.body)
            elif isinstance(node, _COMPOUND_NODES):
                for attr in ("body", "orelse", "finalbody", "handlers", "cases"):
                    sub = getattr(node, attr, None)
                    if sub:
                        stack.append(sub)
    return found


def _is_prose(text: str) -> bool:
    return len(_WORD_RE.findall(text)) >= _MIN_WORDS


def _docstrings(tree: ast.Module) -> list[tuple[int, int, str]]:
    """(first line, last line, cleaned text) of the module's, classes' and functions' docstrings."""
    found = []
    for node in [tree, *_definitions(tree.body)]:
        doc = ast.get_docstring(node, clean=True)
        if not doc or not _is_prose(doc):
            continue
        expr = node.body[0]
        found.append((expr.lineno, expr.end_lineno or expr.lineno, doc))
    return found


def _comment_lines(source: str, skip_lines: set[int]) -> Iterator[tuple[int, str | None]]:
    """(line number, comment text) of full-line comments; text None for ruler lines like `# ----`."""
    text = "\n" + source  # every line now starts after a newline, a literal the regex scans for fast
    lineno, pos = 0, 0
    for m in _COMMENT_LINE_RE.finditer(text):
        lineno += text.count("\n", pos, m.start() + 1)
        pos = m.start() + 1
        if lineno in skip_lines:
            continue
        body = m.group(1)
        yield lineno, (body[1:] if body.startswith(" ") else body) if body.strip(" -=#*~") else None


def _comment_blocks(source: str, skip_lines: set[int]) -> list[tuple[int, int, str]]:
    """Runs of full-line comments that read as prose (not licences, pragmas or commented code)."""
    blocks: list[tuple[int, int, str]] = []
    current: list[str] = []
    start = end = -1

    def close() -> None:
        text = "\n".join(current).strip()
        lines = [ln for ln in current if ln.strip()]
        code_like = sum(bool(_CODE_LINE_RE.match(ln)) for ln in lines)
        low = text.lower()
        boilerplate = text.startswith("!") or any(word in low for word in _BOILERPLATE)
        if _is_prose(text) and code_like * 3 <= len(lines) and not boilerplate:
            blocks.append((start, end, text))

    for lineno, body in _comment_lines(source, skip_lines):
        if current and (body is None or lineno != end + 1):
            close()
            current = []
        if body is None:
            continue
        if not current:
            start = lineno
        current.append(body)
        end = lineno
    if current:
        close()
    return blocks


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsing allocates millions of AST nodes; pausing the cyclic GC makes it ~30% faster."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def module_text(source: str) -> str:
    """A module's docstrings and prose comments in source order, separated by blank lines."""
    try:
        with _gc_paused(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for odd escapes: print nothing
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""  # a file this Python cannot parse (e.g. a version-specific template)
    docs = _docstrings(tree)
    in_docstrings = {n for start, end, _ in docs for n in range(start, end + 1)}
    parts = sorted(docs + _comment_blocks(source, in_docstrings))
    return "\n\n".join(text for _, _, text in parts)


def _topic_documents(root: Path) -> Iterator[Document]:
    """The language reference topics `pydoc` shows (one document each), read without importing."""
    path = root / "pydoc_data" / "topics.py"
    if not path.is_file():
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values):
                if (
                    isinstance(key, ast.Constant)
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                ):
                    yield Document(value.value, f"pydoc_data/topics.py:{key.value}")


def _compiled_module_documents() -> Iterator[Document]:
    """Docstrings of the modules built into the interpreter (builtins, sys, itertools, _io, ...).

    They have no .py source, yet document the most used functions and types (str methods, open,
    sorted); importing a built-in module has no side effects. Order is by sorted name throughout.
    """
    seen: set[int] = set()  # one object may be exported by several modules (_io.open, io.open)
    for name in sorted(sys.builtin_module_names):
        if name in _SKIP_COMPILED:
            continue
        module = importlib.import_module(name)
        parts = [module.__doc__] + [
            doc
            for attr in sorted(vars(module))
            if not attr.startswith("_")
            for doc in _object_docs(getattr(module, attr), seen)
        ]
        texts = [inspect.cleandoc(p) for p in parts if isinstance(p, str) and _is_prose(p)]
        if texts:
            yield Document("\n\n".join(texts), f"builtin:{name}")


def _object_docs(obj: object, seen: set[int]) -> Iterator[str | None]:
    """A built-in function's or class's docstring, and those of the class's public methods."""
    if not (inspect.isbuiltin(obj) or inspect.isclass(obj)) or id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj.__doc__
    if inspect.isclass(obj):
        for attr, member in sorted(vars(obj).items()):
            if not attr.startswith("_") and id(member) not in seen:
                seen.add(id(member))
                yield getattr(member, "__doc__", None)


def _raw_documents(root: Path) -> Iterator[Document]:
    for path in stdlib_files(root):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = module_text(source)
        if text:
            yield Document(text, path.relative_to(root).as_posix())
    yield from _compiled_module_documents()
    yield from _topic_documents(root)


def build_builtin_corpus(path: Path) -> dict:
    """Harvest, clean and write the corpus to `path` atomically; return its info dict."""
    cleaner = Cleaner(CleanConfig())
    docs = chars = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for doc in cleaner(_raw_documents(_stdlib_root())):
            text = doc.text.strip("\n")
            f.write(json.dumps({"text": text, "source": doc.source}, ensure_ascii=False) + "\n")
            docs += 1
            chars += len(text)
    info = {"docs": docs, "chars": chars, "path": str(path), "python": sys.version.split()[0]}
    info["content_version"] = CONTENT_VERSION
    info["clean"] = cleaner.summary.to_dict()
    atomic_write_json(_info_path(path), info)
    return info


def _info_path(path: Path) -> Path:
    return path.with_suffix(".info.json")


def builtin_corpus_path() -> Path:
    """Path of the built-in corpus (JSONL, `text` field), building it on first use (a few seconds)."""
    path = cache_dir() / _cache_name()
    if path.is_file() and path.stat().st_size > 0:
        return path
    try:
        build_builtin_corpus(path)
    except OSError as e:
        raise LmforgeError(
            f"{path}: cannot write the built-in corpus ({e.strerror}); set LMFORGE_CACHE to a writable folder"
        ) from None
    return path


def builtin_corpus_info() -> dict:
    """Facts about the built-in corpus: docs, chars, path (plus Python and content version)."""
    path = builtin_corpus_path()
    info_path = _info_path(path)
    if info_path.is_file():
        try:
            info = read_json(info_path)
            if isinstance(info, dict) and {"docs", "chars"} <= info.keys():
                info["path"] = str(path)
                return info
        except LmforgeError:
            pass  # a damaged side file is recomputed below
    docs = chars = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            docs += 1
            chars += len(json.loads(line)["text"])
    info = {"docs": docs, "chars": chars, "path": str(path), "python": sys.version.split()[0]}
    info["content_version"] = CONTENT_VERSION
    return info
