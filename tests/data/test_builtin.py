"""The built-in corpus harvested from the standard library: content, cache, determinism."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import subprocess
import sys
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest

import lmforge
from lmforge.data import builtin
from lmforge.data.builtin import (
    CONTENT_VERSION,
    builtin_corpus_info,
    builtin_corpus_path,
    module_text,
)
from lmforge.errors import LmforgeError
from lmforge.text.clean import Cleaner
from lmforge.text.corpus import Document


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build once into a private cache; every test in this module shares it."""
    cache = tmp_path_factory.mktemp("lmforge-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_CACHE", str(cache))
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = builtin_corpus_path()
        yield SimpleNamespace(path=path, cache=cache, printed=out.getvalue() + err.getvalue(), warned=caught)


def records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_built_quietly_into_the_cache_with_a_versioned_name(built):
    assert built.path.parent == built.cache
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in built.path.name
    assert f"v{CONTENT_VERSION}" in built.path.name
    assert built.printed == "" and not built.warned
    assert not list(built.cache.glob("*.tmp"))  # the atomic write left nothing behind


def test_content_is_english_documentation_of_a_few_megabytes(built):
    rows = records(built.path)
    chars = sum(len(r["text"]) for r in rows)
    assert len(rows) > 200
    assert 2_000_000 < chars < 12_000_000
    assert all(isinstance(r["text"], str) and r["text"].strip() == r["text"] and r["text"] for r in rows)
    sources = [r["source"] for r in rows]
    assert len(set(sources)) == len(sources)
    for bad in ("test/", "idlelib/", "lib2to3/", "turtledemo/", "site-packages/", "encodings/"):
        assert not any(s.startswith(bad) or f"/{bad}" in s for s in sources), bad
    by_source = dict(zip(sources, (r["text"] for r in rows)))
    assert "JSON" in by_source["json/decoder.py"]
    assert any(s.startswith("pydoc_data/topics.py:") for s in sources)
    assert "ascending order" in by_source["builtin:builtins"]  # docs of modules compiled into Python


def test_second_call_uses_the_cache(built):
    mtime = built.path.stat().st_mtime_ns
    start = time.perf_counter()
    assert builtin_corpus_path() == built.path
    assert time.perf_counter() - start < 0.5
    assert built.path.stat().st_mtime_ns == mtime


def test_info_counts_documents_and_characters(built):
    rows = records(built.path)
    info = builtin_corpus_info()
    assert info["docs"] == len(rows)
    assert info["chars"] == sum(len(r["text"]) for r in rows)
    assert info["path"] == str(built.path)
    builtin._info_path(built.path).unlink()  # without the side file it is recounted
    again = builtin_corpus_info()
    assert (again["docs"], again["chars"], again["path"]) == (info["docs"], info["chars"], info["path"])


def subset_digest() -> str:
    """SHA-256 of the cleaned harvest of the first 50 standard-library modules."""
    root = builtin._stdlib_root()
    files = builtin.stdlib_files(root)[:50]
    docs = [Document(module_text(f.read_text(encoding="utf-8")), f.name) for f in files]
    h = hashlib.sha256()
    for d in Cleaner()(d for d in docs if d.text):
        h.update(d.text.encode() + b"\0")
    return h.hexdigest()


def test_harvest_is_deterministic_across_processes():
    """Another hash seed must not change a single byte (no reliance on set order or hash())."""
    src = str(Path(lmforge.__file__).resolve().parents[1])
    seed = "12345" if os.environ.get("PYTHONHASHSEED") != "12345" else "54321"
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == subset_digest()


_SCRIPT = f"""
import hashlib
from lmforge.data import builtin
from lmforge.data.builtin import module_text
from lmforge.text.clean import Cleaner
from lmforge.text.corpus import Document
{inspect.getsource(subset_digest)}
print(subset_digest())
"""


def test_module_text_keeps_prose_and_skips_licences_and_code():
    source = '''\
# Copyright (c) 2001 Somebody. Licensed under the PSF License.
"""Module docstring explaining what this module does."""

# The cache below keeps parsed results so that repeated lookups
# stay cheap even when the table grows large.
_cache = {}


def lookup(key):
    """Return the value stored for key, computing it the first time."""
    # result = compute(key)
    # _cache[key] = result
    return _cache.get(key)
'''
    text = module_text(source)
    assert text.split("\n\n") == [
        "Module docstring explaining what this module does.",
        "The cache below keeps parsed results so that repeated lookups\nstay cheap even when the table grows large.",
        "Return the value stored for key, computing it the first time.",
    ]
    assert module_text("def broken(:\n") == ""


def test_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("LMFORGE_CACHE", str(blocker))
    with pytest.raises(LmforgeError, match="LMFORGE_CACHE"):
        builtin_corpus_path()
