"""Every ``docs/<file>.md §N.M`` citation in the code resolves to a section of a file in docs/.

Docstrings give the Detectron reason for a rule by citing a section; a citation that points at
a missing file or heading (or at a document outside the repository) hides the reason again.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCANNED = ("detectron_parity", "rcnn", "convert", "parity", "tools", "tests")

_SECTION = r"\d+(?:\.\d+)*"
# "docs/detectron.md §1.1, §1.6", "docs/detectron.md §2.1-2.6", "docs/c4.md §3 and §4".
_CITATION = re.compile(
    rf"docs/(?P<file>[\w.-]+\.md)(?P<refs>(?:(?:,\s*|\s+and\s+|\s+)§{_SECTION}(?:\s*[-–]\s*§?{_SECTION})?)+)"
)
_REF = re.compile(rf"§({_SECTION})(?:\s*[-–]\s*§?({_SECTION}))?")
_EXTERNAL = re.compile(r"reference §|peers\.md|detectron-reference", re.IGNORECASE)
_HEADING = re.compile(rf"^#{{1,6}}\s+({_SECTION})\.?(?:\s|$)", re.MULTILINE)


def _sources() -> list[Path]:
    this = Path(__file__).resolve()  # its patterns and examples are not citations
    return sorted(p for d in SCANNED if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py") if p.resolve() != this)


def _headings(doc: Path) -> set[str]:
    return set(_HEADING.findall(doc.read_text(encoding="utf-8")))


def test_heading_parser_reads_numbered_sections() -> None:
    text = "# Title\n## 4. Test time\n### 4.14 Exactness\n#### 4.14.2 Ties\n## Appendix 5\n"
    assert set(_HEADING.findall(text)) == {"4", "4.14", "4.14.2"}


def test_citation_parser_reads_lists_and_ranges() -> None:
    line = "(docs/detectron.md §1.1, §1.6) and docs/detectron.md §5.2-5.5; docs/c4.md §3 and §4."
    cited = [(m["file"], [r for pair in _REF.findall(m["refs"]) for r in pair if r])
             for m in _CITATION.finditer(line)]
    assert cited == [("detectron.md", ["1.1", "1.6"]), ("detectron.md", ["5.2", "5.5"]),
                     ("c4.md", ["3", "4"])]


def test_every_docs_citation_resolves() -> None:
    headings: dict[str, set[str]] = {}
    broken, count = [], 0
    for path in _sources():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in _CITATION.finditer(line):
                doc = DOCS / m["file"]
                if m["file"] not in headings:
                    headings[m["file"]] = _headings(doc) if doc.is_file() else set()
                for pair in _REF.findall(m["refs"]):
                    for ref in filter(None, pair):
                        count += 1
                        if ref not in headings[m["file"]]:
                            broken.append(f"{path.relative_to(ROOT)}:{lineno}: docs/{m['file']} §{ref}")
    assert count >= 20, f"only {count} citations found: the citation pattern no longer matches the code"
    assert not broken, "citations without a matching file or heading in docs/:\n" + "\n".join(broken)


def test_no_citation_points_outside_the_repository() -> None:
    """Each ``§`` in the code belongs to a ``docs/<file>.md §...`` citation (no bare or external ones)."""
    dangling = []
    for path in _sources():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "§" not in line:
                continue
            if "§" in _CITATION.sub("", line) or _EXTERNAL.search(line):
                dangling.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not dangling, "cite docs/<file>.md §N.M instead:\n" + "\n".join(dangling)


def test_docs_index_lists_every_doc() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md" and f"({p.name})" not in index]
    assert not missing, f"add these to the index docs/README.md: {missing}"
