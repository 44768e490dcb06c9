"""Text cleaning steps, selected by name in `data.clean` (applied in the order listed).

| step | what |
| --- | --- |
| `html` | drop `<script>`/`<style>` blocks and tags, unescape entities (`&amp;` -> `&`) |
| `nfkc` | Unicode NFKC normalization: full-width `ＡＢＣ１２３` -> `ABC123`, ligatures, ... |
| `whitespace` | collapse runs of spaces/tabs to one space and 3+ newlines to two; strip |
| `lowercase` | lower-case |
| `dedupe` | drop exact duplicate documents (after the steps before it), keeping the first |

Stop-word removal (`data.stopwords = "en" | "zh" | "en,zh" | PATH`) is separate, for
classification data: it removes words of the lists in `kerasllm.data.stopwords` (or of a
user file, one word per line). Chinese text is segmented with jieba for it.
"""

import html
import re
import unicodedata
from pathlib import Path

from kerasllm.data import stopwords as stopword_lists
from kerasllm.errors import ConfigError, DataError

CLEANING_STEPS = ("html", "nfkc", "whitespace", "lowercase", "dedupe")

_BLOCKS = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BREAKS = re.compile(r"<\s*(br|/p|/div|/li|/h[1-6]|/tr)\b[^>]*>", re.IGNORECASE)
_TAGS = re.compile(r"<!--.*?-->|<[A-Za-z/!][^<>]*>", re.DOTALL)
_SPACES = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r"\n\s*\n(\s*\n)+")
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORDS = re.compile(r"[\w']+|[^\w\s']+|\s+")


def parse_steps(spec):
    """`"html,nfkc"` (or a list) -> a tuple of step names; unknown names are a ConfigError."""
    steps = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    steps = tuple(s for s in steps if s)
    for step in steps:
        if step not in CLEANING_STEPS:
            raise ConfigError(
                f"data.clean: unknown step {step!r}; expected a comma-separated list of "
                f"{', '.join(CLEANING_STEPS)}"
            )
    return steps


def strip_html(text):
    """Removes HTML tags, comments, scripts and styles; unescapes entities.

    Examples:

    >>> strip_html("<p>Fish &amp; chips</p><script>x()</script>")
    'Fish & chips\\n'
    """
    text = _BLOCKS.sub("", text)
    text = _BREAKS.sub("\n", text)
    text = _TAGS.sub("", text)
    return html.unescape(text)


def collapse_whitespace(text):
    text = _SPACES.sub(" ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    return _NEWLINES.sub("\n\n", text).strip()


_FUNCTIONS = {
    "html": strip_html,
    "nfkc": lambda text: unicodedata.normalize("NFKC", text),
    "whitespace": collapse_whitespace,
    "lowercase": str.lower,
}


def clean_text(text, steps):
    """Applies the per-text steps (all but `dedupe`) to one string."""
    for step in steps:
        if step != "dedupe":
            text = _FUNCTIONS[step](text)
    return text


def clean_documents(documents, steps):
    """Cleans a list of documents; drops documents left empty and, with `dedupe`, repeats.

    Examples:

    >>> clean_documents(["<b>Ｈｅｌｌｏ</b>  world", "Hello world", ""], "html,nfkc,whitespace,dedupe")
    ['Hello world']
    """
    steps = parse_steps(steps)
    if not steps:
        return list(documents)
    cleaned = (clean_text(doc, steps) for doc in documents)
    out, seen = [], set()
    for doc in cleaned:
        if not doc.strip():
            continue
        if "dedupe" in steps:
            if doc in seen:
                continue
            seen.add(doc)
        out.append(doc)
    return out


def load_stopwords(spec):
    """`"en"`, `"zh"`, `"en,zh"` or a path to a UTF-8 file with one word per line -> a set."""
    words = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part in stopword_lists.NAMES:
            words |= stopword_lists.NAMES[part]
            continue
        path = Path(part).expanduser()
        if not path.is_file():
            raise DataError(
                f"data.stopwords: {part!r} is neither a built-in list ({', '.join(stopword_lists.NAMES)}) "
                "nor an existing file"
            )
        from kerasllm.data.corpus import read_text_file

        words |= {line.strip() for line in read_text_file(path).split("\n") if line.strip()}
    return frozenset(words)


def remove_stopwords(text, words):
    """Removes stop words from one text (case-insensitively for Latin script).

    Chinese text (any Han character present) is segmented with jieba first.

    Examples:

    >>> remove_stopwords("this is not a good film", {"this", "is", "a"})
    'not good film'
    """
    if _HAN.search(text):
        from kerasllm.tokenizers.jieba import import_jieba

        tokens = import_jieba().lcut(text)
    else:
        tokens = _WORDS.findall(text)
    kept = [t for t in tokens if t.lower() not in words and t.strip().lower() not in words]
    return collapse_whitespace(_SPACES.sub(" ", "".join(kept)))
