"""Stop strings for generated text."""


class StopStrings:
    """Cuts generated text before the first occurrence of any stop string.

    Text arrives piece by piece (a streamed token at a time). `feed` returns the part that is
    safe to show: it holds back a tail that could still grow into a stop string, and once a stop
    string appears it returns the text before it and sets `done`.

    Args:
        stops: the stop strings (empty strings are ignored).

    Examples:

    >>> stopper = StopStrings(["\\n\\n"])
    >>> stopper.feed("def f():\\n"), stopper.done
    ('def f():', False)
    >>> stopper.feed("    pass\\n\\nclass")
    '\\n    pass'
    >>> stopper.done
    True
    >>> StopStrings(["END"]).cut("abc END def")
    'abc '
    """

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.done = False

    def feed(self, piece):
        """Adds `piece`; returns the newly showable text ('' once done)."""
        if self.done:
            return ""
        text = self.pending + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.done, self.pending = True, ""
            return text[: min(hits)]
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.pending = text[len(text) - hold :]
        return text[: len(text) - hold]

    def flush(self):
        """The held-back tail, at the end of generation (it never became a stop string)."""
        tail, self.pending = ("" if self.done else self.pending), ""
        return tail

    def cut(self, text):
        """`text` up to the first stop string (all of it when none occurs)."""
        return self.feed(text) + self.flush()
