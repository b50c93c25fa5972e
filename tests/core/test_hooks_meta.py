"""Meta-tests that keep the plugin API honest (Datasette's test_plugins.py and test_docs.py).

For every hook declared in :mod:`zhongtai.hooks.hookspecs` (a function carrying the
``@hookspec`` marker):

* **Documented with its exact signature.** ``docs/plugins.md`` has, under its
  ``## Hook reference`` heading, a section headed ``### `<hook>` `` whose first
  ``python`` code block begins with ``def <hook>(<arguments>) -> <return>:``, the
  annotations spelled exactly as in ``hookspecs.py``. The section also states
  ``firstresult: yes|no`` and ``Added in <version>`` as the spec does.
* **Exercised by a test.** Convention: a test function anywhere under ``tests/``
  named ``test_hook_<hook>``, or ``test_hook_<hook>__<detail>`` when one hook has
  several (the double underscore keeps ``startup`` from matching ``startup_x``).
  That test must assert the hook's effect, not only that it ran; the meta-test can
  only check that it exists.
* **Docstring says when it is called.** The first line starts with ``Called`` (and
  says what to return), the docstring names the version that added the hook, and a
  ``firstresult`` hook says it stops at the first non-None result.
* **Evolvable.** No argument has a default (pluggy would ignore it; STYLE 11).

Tests are found by parsing the files under ``tests/`` (nothing is imported), so a
hook's test may live with the plugin that best exercises it.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from zhongtai.hooks import hookspecs
from zhongtai.hooks.markers import PROJECT

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"
REFERENCE_HEADING = "## Hook reference"
SPEC_ATTR = f"{PROJECT}_spec"  # set by pluggy's HookspecMarker on each spec function


def hookspec_functions() -> dict[str, Callable[..., Any]]:
    """``{name: function}`` for every hook specification in ``hookspecs.py``."""
    return {
        name: value
        for name, value in vars(hookspecs).items()
        if inspect.isfunction(value) and getattr(value, SPEC_ATTR, None) is not None
    }


HOOKS = sorted(hookspec_functions())


def _annotation(value: Any) -> str:
    # hookspecs.py uses postponed annotations, so these are the strings as written.
    return value if isinstance(value, str) else inspect.formatannotation(value)


def signature_line(name: str, fn: Callable[..., Any]) -> str:
    """``def name(arg: Type, ...) -> Return:`` as declared, annotations verbatim."""
    sig = inspect.signature(fn)
    params = []
    for param in sig.parameters.values():
        text = param.name
        if param.annotation is not inspect.Parameter.empty:
            text += f": {_annotation(param.annotation)}"
        params.append(text)
    line = f"def {name}({', '.join(params)})"
    if sig.return_annotation is not inspect.Signature.empty:
        line += f" -> {_annotation(sig.return_annotation)}"
    return line + ":"


@cache
def documented_hooks() -> dict[str, str]:
    """``{hook: its section's text}`` from the hook reference of docs/plugins.md."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.find(f"\n{REFERENCE_HEADING}\n")
    assert start != -1, f"{DOCS} has no {REFERENCE_HEADING!r} heading"
    body = text[start + len(REFERENCE_HEADING) + 2 :]
    end = re.search(r"^## ", body, re.MULTILINE)
    body = body[: end.start()] if end else body
    parts = re.split(r"^### `(\w+)`[ \t]*$", body, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def first_python_block(section: str) -> str | None:
    match = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else None


@cache
def collected_test_names() -> frozenset[str]:
    """Names of the test functions and methods in every test module under tests/."""
    names: set[str] = set()
    for path in TESTS.rglob("*.py"):
        if not (path.name.startswith("test_") or path.name.endswith("_test.py")):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return frozenset(names)


def covers(test_name: str, hook: str) -> bool:
    prefix = f"test_hook_{hook}"
    return test_name == prefix or test_name.startswith(prefix + "__")


def added_in(fn: Callable[..., Any]) -> str | None:
    match = re.search(r"Added in (\d+(?:\.\d+)+)", inspect.getdoc(fn) or "")
    return match.group(1) if match else None


def test_the_hookspecs_are_found() -> None:
    # Guards the discovery itself: an empty list would make every check below vacuous.
    assert {"startup", "shutdown", "register_routes", "on_event"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_exact_signature(hook: str) -> None:
    fn = hookspec_functions()[hook]
    section = documented_hooks().get(hook)
    assert section is not None, f"docs/plugins.md: no '### `{hook}`' under {REFERENCE_HEADING!r}"
    block = first_python_block(section)
    assert block is not None, f"docs/plugins.md: section {hook!r} has no ```python block"
    assert block.splitlines()[0] == signature_line(hook, fn), (
        f"docs/plugins.md: {hook}'s signature differs from hookspecs.py"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_doc_states_firstresult_and_version(hook: str) -> None:
    fn = hookspec_functions()[hook]
    section = documented_hooks()[hook]
    firstresult = getattr(fn, SPEC_ATTR)["firstresult"]
    stated = re.search(r"firstresult\W+(yes|no)\b", section)
    assert stated is not None, f"docs/plugins.md: {hook} does not say 'firstresult: yes|no'"
    assert stated.group(1) == ("yes" if firstresult else "no")
    assert f"Added in {added_in(fn)}" in section


def test_docs_describe_no_hook_that_does_not_exist() -> None:
    stale = sorted(set(documented_hooks()) - set(HOOKS))
    assert stale == [], f"docs/plugins.md documents hooks hookspecs.py lacks: {stale}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    found = [name for name in collected_test_names() if covers(name, hook)]
    assert found, f"no test named test_hook_{hook} (or test_hook_{hook}__…) under tests/"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_docstring_says_when_it_is_called(hook: str) -> None:
    fn = hookspec_functions()[hook]
    doc = inspect.getdoc(fn)
    assert doc, f"{hook} has no docstring"
    first = doc.splitlines()[0]
    assert first.startswith("Called "), f"{hook}: first line should say when: {first!r}"
    assert added_in(fn) is not None, f"{hook}: docstring should say 'Added in X.Y'"
    if getattr(fn, SPEC_ATTR)["firstresult"]:
        assert "first non-None" in doc, f"{hook} is firstresult; its docstring must say so"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_takes_arguments_without_defaults(hook: str) -> None:
    params = inspect.signature(hookspec_functions()[hook]).parameters.values()
    assert all(p.default is inspect.Parameter.empty for p in params)
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)


def test_the_naming_convention_is_not_fooled_by_prefixes() -> None:
    assert covers("test_hook_startup", "startup")
    assert covers("test_hook_startup__async", "startup")
    assert not covers("test_hook_startup_extra", "startup")
    assert not covers("test_hook_register_routes", "register_route")
