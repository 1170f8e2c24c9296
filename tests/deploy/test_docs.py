"""Checks of the documentation: README.md and docs/*.md.

- docs/configuration.md holds each binary's flag table between marker lines, exactly as
  `<binary> flags` prints it (from ${EGRESS_BIN_DIR:-target/debug}, as test_deploy.py finds
  the binaries), so the flags documented are the flags the binaries take;
- README.md stays a front door: at most 200 lines;
- every relative link in README.md and docs/*.md points at a file that exists (and, into a
  Markdown file, at a heading it has);
- the OpenShift commands of docs/deployment.md process the templates that exist, with their
  parameters, and create every secret the CronJobs read (as test_deploy.py checks README.md's).

    /opt/egress-py/bin/python -m pytest tests/deploy -q
    /opt/egress-py/bin/python tests/deploy/test_docs.py --regenerate   # rewrite the flag tables
"""

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy as deploy  # noqa: E402  (the binaries' directory, the template renderer)

REPO = Path(__file__).resolve().parents[2]
CONFIGURATION = REPO / "docs" / "configuration.md"
README_MAX_LINES = 200
BINARIES = ["egress-dump", "egress-sync"]
END = "<!-- end -->"
REGENERATE = f"{Path(sys.executable)} tests/deploy/test_docs.py --regenerate"


def start_marker(binary):
    return f"<!-- {binary} flags -->"


def flags_output(binary):
    """What `<binary> flags` prints: the flags as a Markdown table."""
    path = deploy.bin_dir() / binary
    if not path.is_file():
        pytest.fail(f"{path} does not exist: build it with `cargo build -p {binary}` (or set EGRESS_BIN_DIR)")
    proc = subprocess.run([str(path), "flags"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"`{binary} flags` exited {proc.returncode}: {proc.stderr.strip()}"
    return proc.stdout


def marked_span(text, binary):
    """(start, end) of the text between `binary`'s marker lines in `text`."""
    start = start_marker(binary) + "\n"
    assert text.count(start) == 1, f"docs/configuration.md must hold the line {start_marker(binary)!r} once"
    begin = text.index(start) + len(start)
    end = text.find(END, begin)
    assert end >= 0, f"docs/configuration.md: no {END!r} after {start_marker(binary)!r}"
    assert text[end - 1 : end] == "\n", f"docs/configuration.md: {END!r} must start a line"
    return begin, end


@pytest.mark.parametrize("binary", BINARIES)
def test_flag_tables_are_what_the_binaries_print(binary):
    text = CONFIGURATION.read_text()
    begin, end = marked_span(text, binary)
    documented, printed = text[begin:end], flags_output(binary)
    if documented != printed:
        diff = "".join(
            difflib.unified_diff(
                documented.splitlines(keepends=True),
                printed.splitlines(keepends=True),
                "docs/configuration.md",
                f"{binary} flags",
            )
        )
        pytest.fail(
            f"docs/configuration.md: the flags between {start_marker(binary)!r} and {END!r} are not "
            f"what `{binary} flags` prints; regenerate with: {REGENERATE}\n{diff}"
        )


def regenerate():
    """Rewrite each marked flag table in docs/configuration.md from the binaries."""
    text = CONFIGURATION.read_text()
    for binary in BINARIES:
        begin, end = marked_span(text, binary)
        text = text[:begin] + flags_output(binary) + text[end:]
    CONFIGURATION.write_text(text)
    print(f"rewrote the flag tables of {', '.join(BINARIES)} in {CONFIGURATION.relative_to(REPO)}")


# ---------------------------------------------------------------------------------------------
# README.md's length


def test_readme_is_a_front_door_of_at_most_200_lines():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, more than {README_MAX_LINES}: move the detail into docs/ "
        "(configuration.md, deployment.md, mirror.md, ...) and link to it"
    )


# ---------------------------------------------------------------------------------------------
# Relative links

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def outside_fences(text):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if fence is None and (stripped.startswith("```") or stripped.startswith("~~~")):
            fence = stripped[:3]
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        yield number, line


def prose_lines(text):
    """(line number, line) outside fenced code blocks, inline code spans removed."""
    for number, line in outside_fences(text):
        yield number, re.sub(r"`+[^`]*`+", "", line)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path):
    seen, found = {}, set()
    for _, line in outside_fences(path.read_text()):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path):
    for number, line in prose_lines(path.read_text()):
        for m in LINK.finditer(line):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
                continue  # http:, https:, mailto:
            yield number, target


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_existing_files_and_headings(doc):
    broken = []
    for number, target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        where = f"{doc.relative_to(REPO)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where}: {file_part} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where}: {dest.relative_to(REPO)} has no heading #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


# ---------------------------------------------------------------------------------------------
# docs/deployment.md's commands match the templates


def deployment_commands():
    """Every line of the shell code blocks of docs/deployment.md, continuations joined."""
    text = (REPO / "docs" / "deployment.md").read_text()
    return deploy.shell_commands(text, "docs/deployment.md")


def test_deployment_doc_processes_the_templates_with_their_parameters():
    deploy.check_processed_templates(deployment_commands(), "docs/deployment.md")


def test_deployment_doc_creates_every_secret_the_cronjobs_read():
    deploy.check_created_secrets(deployment_commands(), "docs/deployment.md")


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        regenerate()
    else:
        sys.exit(f"usage: {sys.argv[0]} --regenerate   (tests: python -m pytest {Path(__file__).relative_to(REPO)})")
