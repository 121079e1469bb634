"""The prompt filter's word list and how a prompt is matched against it.

An entry is a word or a phrase. It matches whole words only ("ass" is not in "class"), in any
case, with a plural "s" or "es", and through the usual disguises: leetspeak digits and symbols
("s3x", "pr0n", "$lut"), accents and full-width or Cyrillic look-alike letters, invisible
characters, and letters spelled out one by one ("s e x", "p.o.r.n"). Both the prompt and the
entries are brought to the same canonical form first, so an operator writes entries plainly.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# Leetspeak and look-alikes, to one letter each. "l" and "1" and "i" all become "i" (a "1"
# stands for either), on both sides, so that "s1ut" and "slut" meet.
_LOOKALIKES = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "l": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "8": "b",
        "9": "g",
        # Cyrillic and Greek letters that look like Latin ones
        "\u0430": "a",
        "\u0435": "e",
        "\u043e": "o",
        "\u0440": "p",
        "\u0441": "c",
        "\u0445": "x",
        "\u0443": "y",
        "\u043a": "k",
        "\u043c": "m",
        "\u0442": "t",
        "\u043d": "h",
        "\u0456": "i",
        "\u0455": "s",
        "\u03b1": "a",
        "\u03bf": "o",
        "\u03bd": "v",
        "\u03b5": "e",
    }
)
# Symbols read as letters only inside a word ("$lut", "sh!t"), not as punctuation ("panda!").
_SYMBOLS = {"!": "i", "|": "i", "@": "a", "$": "s", "+": "t"}
_SYMBOL_IN_WORD = re.compile(r"[!|@$+](?=\w)")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_TOKEN = re.compile(r"[a-z]+")
# Letters spelled out one by one: at least this many single letters in a row form one word.
_SPELLED_OUT = 3


def canonical_tokens(text: str) -> list[str]:
    """The words of `text` in canonical form: lower case, accents and look-alikes undone,
    leetspeak read as letters, spelled-out letters joined."""
    text = unicodedata.normalize("NFKD", text.translate(_INVISIBLE).casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = _SYMBOL_IN_WORD.sub(lambda m: _SYMBOLS[m.group()], text)
    tokens = _TOKEN.findall(text.translate(_LOOKALIKES))
    joined: list[str] = []
    run: list[str] = []
    for token in [*tokens, ""]:
        if len(token) == 1:
            run.append(token)
            continue
        if len(run) >= _SPELLED_OUT:
            joined.append("".join(run))
        else:
            joined.extend(run)
        run = []
        if token:
            joined.append(token)
    return joined


def _plural_stem(token: str, entries: frozenset[str]) -> str:
    for suffix in ("es", "s"):
        if token.endswith(suffix) and token[: -len(suffix)] in entries:
            return token[: -len(suffix)]
    return token


@dataclass(frozen=True)
class Match:
    entry: str  # the list's entry, as written
    prompt: int  # which prompt (its index)


class DenyList:
    """Words and phrases that a prompt may not contain."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._phrases: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        self.size = 0
        for entry in entries:
            tokens = tuple(canonical_tokens(entry))
            if not tokens:
                continue
            self._phrases.setdefault(tokens[0], []).append((tokens, entry.strip()))
            self.size += 1
        for phrases in self._phrases.values():
            phrases.sort(key=lambda p: -len(p[0]))
        self._firsts = frozenset(self._phrases)
        self._all = frozenset(t for ps in self._phrases.values() for p, _ in ps for t in p)

    def find(self, text: str) -> str | None:
        """The first entry found in `text`, or None."""
        tokens = [_plural_stem(t, self._all) for t in canonical_tokens(text)]
        for i, token in enumerate(tokens):
            if token not in self._firsts:
                continue
            for phrase, entry in self._phrases[token]:
                if tuple(tokens[i : i + len(phrase)]) == phrase:
                    return entry
        return None

    def first_match(self, texts: Iterable[str]) -> Match | None:
        for index, text in enumerate(texts):
            entry = self.find(text)
            if entry is not None:
                return Match(entry, index)
        return None


def read_entries(lines: Iterable[str]) -> list[str]:
    """A list file's entries: one word or phrase a line; blank lines and `#` comments skipped."""
    entries = []
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if entry:
            entries.append(entry)
    return entries


def shipped_entries() -> list[str]:
    """The list that ships with the package (safety/deny-words.txt)."""
    text = resources.files("localstability.safety").joinpath("deny-words.txt").read_text("utf-8")
    return read_entries(text.splitlines())


def deny_list(builtin: bool, words: Iterable[str] = (), files: Iterable[Path] = ()) -> DenyList:
    """The shipped list (unless `builtin` is False), the operator's `words` and the entries of
    the operator's `files`."""
    entries = shipped_entries() if builtin else []
    entries.extend(words)
    for file in files:
        entries.extend(read_entries(file.read_text("utf-8").splitlines()))
    return DenyList(entries)
