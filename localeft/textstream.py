"""Token bytes to streamed text: incremental UTF-8 and stop strings.

A multi-byte character split over several tokens is emitted only once complete; text that might
be the beginning of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

import codecs
from typing import Sequence


class TextStream:
    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.text = ""
        self._sent = 0
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to show."""
        self.text += self._decoder.decode(piece)
        start = max(self._sent - self._hold, 0)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return self._flush()
        safe = len(self.text) - self._partial_stop()
        out = self.text[self._sent : safe] if safe > self._sent else ""
        self._sent = max(self._sent, safe)
        return out

    def finish(self) -> str:
        """End of generation: flush any held-back text (a dangling partial character becomes
        U+FFFD)."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        return self._flush()

    def _flush(self) -> str:
        out = self.text[self._sent :]
        self._sent = len(self.text)
        return out

    def _partial_stop(self) -> int:
        """How many trailing characters might begin a stop string."""
        text = self.text
        for k in range(min(self._hold, len(text)), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0
