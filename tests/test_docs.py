"""The README is an entry point (short, set-up commands and a picture on its first screen), and every relative link
in it, in docs/ and in results/README.md leads to a file that exists, and to a heading that exists where it names one."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS, REPO / "results" / "README.md"]

FIRST_SCREEN = 80  # lines
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def without_code(markdown: str, inline: str = "drop") -> str:
    """The text outside fenced code blocks, where a Markdown renderer makes links and headings. Inline code spans are
    dropped (no links there) or, with inline="text", kept as plain text (a heading's anchor keeps their words)."""
    kept, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            kept.append("")
            continue
        kept.append("" if fenced else re.sub(r"`([^`]*)`", r"\1" if inline == "text" else "", line))
    return "\n".join(kept)


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens, -1, -2, ...
    for repeats."""
    anchors, seen = set(), {}
    for line in without_code(markdown, inline="text").splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def relative_links(page: Path) -> list[str]:
    targets = LINK.findall(without_code(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]  # http:, mailto:, ...


def broken(page: Path, target: str, root: Path = REPO) -> str | None:
    """Why a relative link from `page` leads nowhere, or None. A link must stay inside the repository (`root`):
    outside it, it would not resolve on GitHub or on the Space's page."""
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    where = page.relative_to(root)
    if not file.is_relative_to(root.resolve()):
        return f"{where}: {target}: outside the repository"
    if not file.exists():
        return f"{where}: {target}: no file {path}"
    if anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text(encoding="utf-8")):
        return f"{where}: {target}: no heading #{anchor} in {file.relative_to(root.resolve())}"
    return None


def test_the_link_checker_sees_links_and_headings_as_github_does(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n## `score`, and more!\n## Title\n```bash\n# not a heading [x](gone.md)\n```\n"
                    "[a](#score-and-more) [b](#title-1) `[c](gone.md)` ![d](missing.png) [e](https://x.org/y)\n")
    assert heading_anchors(page.read_text()) == {"title", "score-and-more", "title-1"}
    assert relative_links(page) == ["#score-and-more", "#title-1", "missing.png"]
    assert [broken(page, t, tmp_path) for t in relative_links(page)][:2] == [None, None]
    assert "no file missing.png" in broken(page, "missing.png", tmp_path)
    assert "no heading #nowhere" in broken(page, "#nowhere", tmp_path)
    assert "outside the repository" in broken(page, "../elsewhere.md", tmp_path)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    links = relative_links(page)
    assert links, f"{page.relative_to(REPO)} links to nothing: the checker would pass it without looking"
    problems = [problem for target in links if (problem := broken(page, target))]
    assert not problems, "\n".join(problems)


def test_docs_has_a_page_per_subject():
    names = {p.name for p in DOCS}
    assert {"method.md", "api.md", "cli.md", "app.md", "benchmarks.md", "performance.md", "development.md"} <= names


def test_readme_is_an_entry_point_not_a_notebook():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the depth belongs in docs/"
    assert len(text.encode("utf-8")) <= 30_000, f"README.md is {len(text.encode('utf-8'))} bytes; at most 30 KB"
    # The Hugging Face Spaces configuration comes first, or the Space does not start.
    front_matter = text.split("---\n")[1] if text.startswith("---\n") else ""
    assert "sdk: gradio" in front_matter and "app_file: app.py" in front_matter


def test_readme_first_screen_has_both_set_up_commands_and_a_picture():
    first = README.read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    # .ci/run runs the README's test command verbatim, on the line after the comment that says so
    test_command = ci[ci.index("# The README's test command, verbatim.") + 1]
    assert test_command in first
    assert any(line.startswith("python -m venv") and line.endswith("python app.py") for line in first)
    pictures = [target for line in first for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", line)]
    assert pictures and all((REPO / p).is_file() for p in pictures), pictures
