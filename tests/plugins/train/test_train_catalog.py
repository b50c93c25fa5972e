"""The train plugin's pages speak Chinese: every string has its translation."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po


def test_every_string_of_the_train_pages_has_a_chinese_translation():
    root = Path(str(resources.files("zhongtai_train")))
    found = extract_from_dir(
        str(root),
        [("**.py", "python"), ("templates/**.html", "jinja2")],
        {"templates/**.html": {"extensions": "jinja2.ext.i18n"}},
        keywords={"_": None, "gettext": None},
    )
    strings = {message for _f, _l, message, _c, _x in found}
    assert "Experiments" in strings and "GPUs" in strings  # the extraction itself works
    with (root / "locale" / "zh" / "LC_MESSAGES" / "train.po").open("rb") as fh:
        catalog = {m.id: m.string for m in read_po(fh) if m.id}
    core = Path(str(resources.files("zhongtai.ui"))) / "locale" / "zh" / "LC_MESSAGES"
    with (core / "zhongtai.po").open("rb") as fh:
        catalog.update({m.id: m.string for m in read_po(fh) if m.id and m.string})
    missing = sorted(s for s in strings if not catalog.get(s))
    assert not missing, missing
