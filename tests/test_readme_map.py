"""README "Where things are" names every module of the engine, the figures, the server and the tabs, and no
module that is not there: a map that matches the tree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mapped() -> set[str]:
    """The modules the map's table names: the first name of a cell is a path, the others sit in its folder."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Where things are"):readme.index("## What the engine does")]
    names = set()
    for row in (line for line in section.splitlines() if line.startswith("|")):
        cells = row.split("|")
        if len(cells) < 3:
            continue
        folder = ""
        for name in re.findall(r"`([\w/.]+\.py)`", cells[2]):
            if "/" in name:
                folder = name.rsplit("/", 1)[0] + "/"
                names.add(name)
            else:
                names.add(folder + name)
    return names


def test_the_readme_map_names_every_module_and_no_other():
    there = {str(p.relative_to(ROOT)) for p in [*ROOT.glob("tempo_core/**/*.py"), *ROOT.glob("components/*/*.py")]
             if p.name != "__init__.py" or p.parent.name in ("runtime", "serving", "analysis", "tempo_core")}
    there |= {"app.py", "cli.py"}
    names = mapped()
    assert not there - names, f"modules the README map leaves out: {sorted(there - names)}"
    assert not names - there, f"modules the README map names that do not exist: {sorted(names - there)}"


def test_the_map_reader_resolves_names_in_the_folder_before_them():
    assert {"tempo_core/runtime/attention.py", "tempo_core/runtime/fastpath.py", "app.py"} <= mapped()
