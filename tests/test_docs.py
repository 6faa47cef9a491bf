"""The documentation stays true to the code: every config key is documented in
docs/training.md, and every relative link of README.md and docs/*.md reaches its file (and its
heading, for a link with an anchor into a markdown file).

Fast: reads text files and the default config; nothing is compiled.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAINING_DOC = REPO / "docs" / "training.md"
LINKED_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# [text](target) and ![alt](target), with an optional "title"; reference definitions [x]: target
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, ...


def config_keys(node, prefix: str = "") -> list[str]:
    """Dotted leaf keys of a config: sections (non-empty mappings) expanded; a value that is
    a sequence or an empty mapping is one key. Keys under a free-form mapping count as it."""
    from sagd_jax import config as config_module

    free_form = getattr(config_module, "FREE_FORM", None)
    keys = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items") and len(value) and name != free_form:
            keys += config_keys(value, f"{name}.")
        else:
            keys.append(name)
    return keys


def documented(key: str, text: str) -> bool:
    """``key`` appears in backticks in ``text``: `` `data.corruption.kind` ``, or with a value,
    `` `data.corruption.kind=stripes` ``."""
    return re.search(r"`" + re.escape(key) + r"(=[^`]*)?`", text) is not None


def test_every_config_key_is_documented_in_training_md():
    from sagd_jax.config import default_config

    text = TRAINING_DOC.read_text(encoding="utf-8")
    keys = config_keys(default_config())
    assert len(keys) > 50  # the walk found the sections
    missing = [key for key in keys if not documented(key, text)]
    assert not missing, ("config keys not documented in docs/training.md (write each as "
                         "`section.key` in backticks): " + ", ".join(missing))


def test_documented_matches_whole_keys_only():
    text = "see `train.num_steps=5` and `data.corruption`"
    assert documented("train.num_steps", text)
    assert documented("data.corruption", text)
    assert not documented("train.num", text)
    assert not documented("data.corruption.kind", text)
    assert not documented("num_steps", text)


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (their brackets are code)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    """The link targets of a markdown file, outside code."""
    text = prose(path.read_text(encoding="utf-8"))
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)


def relative_links(path: Path) -> list[tuple[str, Path, str]]:
    """``(target as written, resolved file, anchor)`` of each relative link in ``path``."""
    found = []
    for target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = path if not file_part else (path.parent / file_part).resolve()
        found.append((target, resolved, anchor))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces
    as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file (repeats numbered as GitHub does)."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def test_link_parsing_finds_targets_outside_code():
    sample = ("[a](docs/x.md) ![b](img.png \"t\") [c](https://e.org) [d](#here)\n"
              "`[e](not/a/link.md)`\n```\n[f](in/fence.md)\n```\n[g]: ref/target.md\n")
    text = prose(sample)
    assert INLINE_LINK.findall(text) == ["docs/x.md", "img.png", "https://e.org", "#here"]
    assert REFERENCE_LINK.findall(text) == ["ref/target.md"]
    assert slug("`data`: the images") == "data-the-images"
    assert slug("End to end: the test command, and 1.5x") == "end-to-end-the-test-command-and-15x"


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(doc):
    broken = [target for target, resolved, _ in relative_links(doc) if not resolved.exists()]
    assert not broken, f"{doc.relative_to(REPO)}: links to missing files: {', '.join(broken)}"


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_anchors_into_markdown_files_exist(doc):
    broken = []
    for target, resolved, anchor in relative_links(doc):
        if anchor and resolved.suffix == ".md" and resolved.is_file():
            if anchor not in anchors(resolved):
                broken.append(target)
    assert not broken, f"{doc.relative_to(REPO)}: links to missing headings: {', '.join(broken)}"
