"""The core's catalogs: every string of the UI has its Simplified Chinese translation."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

UI = Path(str(resources.files("zhongtai.ui")))


def extracted() -> set[str]:
    method_map = [("templates/**.html", "jinja2"), ("**.py", "python")]
    options = {"templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    found = extract_from_dir(str(UI), method_map, options, keywords={"_": None, "gettext": None})
    return {message for _file, _line, message, _comments, _context in found}


def test_every_ui_string_has_a_chinese_translation():
    with (UI / "locale" / "zh" / "LC_MESSAGES" / "zhongtai.po").open("rb") as fh:
        catalog = read_po(fh)
    translated = {m.id: m.string for m in catalog if m.id}
    strings = extracted()
    assert len(strings) > 50
    missing = sorted(s for s in strings if not translated.get(s))
    assert not missing, f"add these to the zh catalog: {missing}"
    assert not [m.id for m in catalog if m.id and m.fuzzy], "fuzzy entries are not shown"
