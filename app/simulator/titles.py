"""A title request (instructions asking for a conversation's title) gets a short title made of the user's words."""

from __future__ import annotations

import re

from app.simulator.generation import COMMON_WORDS, split_tokens

# Parley's own title request says "title for this conversation"; any instructions asking for a chat's or a
# conversation's title count, as a model would read them.
_ASKS_FOR_A_TITLE = re.compile(r"\btitle\b.{0,80}\b(conversation|chat)\b", re.IGNORECASE | re.DOTALL)
# Words a title keeps: starting with a letter, three characters or more.
_WORD = re.compile(r"[^\W\d_][\w'-]{2,}")
# The answers' common words, and the greetings and verbs of asking that say nothing of a subject ("me" may).
_FILLER = (COMMON_WORDS | {"hey", "should", "thank", "thanks", "use", "want"}) - {"me"}
MAX_WORDS = 5


def asks_for_title(instructions: str | None) -> bool:
    return bool(instructions) and _ASKS_FOR_A_TITLE.search(instructions or "") is not None


def title_for(user_text: str) -> str:
    """Up to five of the user's words worth keeping, title-cased; the same words always get the same title."""
    words: list[str] = []
    for match in _WORD.finditer(user_text):
        word = match.group(0)
        if word.lower() not in _FILLER and word.lower() not in (w.lower() for w in words):
            words.append(word)
            if len(words) == MAX_WORDS:
                break
    if not words:
        return "New Conversation"
    cased = [word[:1].upper() + word[1:] for word in words]
    return " ".join(cased) if len(cased) > 1 else f"About {cased[0]}"


def title_tokens(instructions: str | None, user_text: str) -> list[str] | None:
    """The answer's tokens when the request asks for a title, else None (an ordinary answer)."""
    return split_tokens(title_for(user_text)) if asks_for_title(instructions) else None
