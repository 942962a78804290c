"""Deterministic "model output": tokens, the Markdown reply, reasoning summaries, function-call arguments.

A token is a word or a punctuation mark together with the whitespace before it, so the deltas of a text
concatenate back to exactly that text, and counting is the same cheap regex everywhere.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from app.simulator.json_types import JsonObject

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])")
_QUOTE_MAX_TOKENS = 24
# Words worth repeating back: three or more characters, starting with a letter, and not filler.
_WORD = re.compile(r"[^\W\d_]\w{2,}")
COMMON_WORDS = frozenset(
    {
        "about",
        "also",
        "and",
        "any",
        "are",
        "but",
        "can",
        "could",
        "did",
        "does",
        "explain",
        "for",
        "from",
        "give",
        "have",
        "help",
        "hello",
        "how",
        "into",
        "just",
        "like",
        "make",
        "me",
        "more",
        "much",
        "need",
        "please",
        "show",
        "some",
        "tell",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "this",
        "those",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    }
)
_FALLBACK_WORDS = ("ideas", "details", "examples")
# Markdown's inline syntax characters, escaped where the user's own words are quoted.
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]<>|])")
_FIELD = re.compile(r"\{(\w+)\}")

# Answers that exercise a chat UI: paragraphs, bulleted and numbered lists, fenced code, a table, bold and
# inline code. `{quote}` is the user's message (shortened), `{k1}`..`{k3}` words from it (`{K1}`..: capitalised).
_TEMPLATES = (
    """You asked about **{quote}**. Here is a short overview.

- **{K1}**: the part to settle first, since the rest builds on it.
- **{K2}**: worth a closer look once `{k1}` is clear.
- **{K3}**: optional, but it often saves time later.

In short, start with {k1} and add the rest as you need it.""",
    """Here is one way to approach "{quote}", step by step:

1. Decide what `{k1}` should do, in one sentence.
2. Try it on a small example of {k2}.
3. Compare the result with what you expected, then grow it.

A minimal sketch:

```{language}
{code}
```

Run it on a few inputs before you rely on it.""",
    """Here is how the main options behind "{quote}" compare:

| Option | Good at | Watch out for |
| --- | --- | --- |
| {K1} | getting started quickly | fewer knobs to turn |
| {K2} | flexibility | more to learn up front |
| {K3} | speed | extra care with edge cases |

**My pick:** begin with {k1}, and move to {k2} if you outgrow it.""",
    """Good question: **{quote}**.

The short answer is that it depends on `{k1}`. When {k2} stays small, the simplest approach usually wins; when \
it grows, something sturdier pays off.

The longer answer also weighs {k3}: it rarely decides things alone, but it tips the balance between two close \
options. Tell me more about your setup and I can be more specific.""",
    """Let's break down **{quote}**.

Three things to keep in mind:

- `{k1}` is where most of the work happens.
- {K2} deserves a second look before you commit.
- Keep {k3} simple until you have a reason not to.

For example:

```{language}
{code}
```

That covers the basics; ask away if you want to go deeper.""",
    """Here is a quick plan for "{quote}":

1. **Start** with {k1}.
2. **Check** how {k2} behaves.
3. **Refine** the parts that touch {k3}.

| Step | Time | Result |
| --- | --- | --- |
| Start | 5 min | a first draft of {k1} |
| Check | 10 min | notes on {k2} |
| Refine | 15 min | a cleaner {k3} |

Most of the value comes from the first step, so do not skip it.""",
)
# What each template's reasoning summary says the answer will be.
_PLANS = (
    "give a short overview as a bulleted list",
    "lay out the steps and add a small code sketch",
    "compare the options in a table",
    "answer in two short paragraphs",
    "list the key points and show an example",
    "give a numbered plan with a timing table",
)
_CODE = {
    "python": """def {function}(entries):
    \"\"\"Return the entries that mention {k3}.\"\"\"
    return [entry for entry in entries if "{k3}" in entry]


print({function}(["{k3} first", "then {k2}"]))""",
    "javascript": """function {function}(entries) {
  // Keep the entries that mention {k3}.
  return entries.filter((entry) => entry.includes("{k3}"));
}

console.log({function}(["{k3} first", "then {k2}"]));""",
    "bash": """# Count the lines that mention {k3}, then show the first few.
grep -c "{k3}" {k1}.txt
grep "{k3}" {k1}.txt | head -n 5""",
}
_FILLER_SENTENCES = (
    "There is more to say, so here is a little more detail.",
    "Each part of this answer arrives as its own token.",
    "The same question always gets this same answer.",
    "Nothing here comes from a real model: it is the simulator talking.",
    "Tokens are counted as words and punctuation marks.",
    "Ask again and you will read these very sentences once more.",
)


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def split_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def stable_hash(text: str) -> int:
    """Stable across processes, unlike `hash()`."""
    return zlib.crc32(text.encode())


def reply_tokens(*, user_text: str | None, tool_outputs: list[str], output_tokens: int | None) -> list[str]:
    """The assistant's answer as tokens: Markdown about the input (or the tool outputs it answers).

    The same input always gets the same answer, picked among a few shapes by a hash of the input. With
    `output_tokens` set the answer has exactly that many tokens (cut short, or padded with more paragraphs).
    """
    return list(_reply_tokens(user_text, tuple(tool_outputs), output_tokens))


# Benchmarks send one question over and over: remembered, its answer costs no more than the old one-line echo.
@functools.lru_cache(maxsize=256)
def _reply_tokens(user_text: str | None, tool_outputs: tuple[str, ...], output_tokens: int | None) -> tuple[str, ...]:
    tokens = split_tokens(reply_text(user_text=user_text, tool_outputs=list(tool_outputs)))
    if output_tokens is None:
        return tuple(tokens)
    sentence = stable_hash(user_text or "")
    while len(tokens) < output_tokens:
        # A new paragraph every third sentence, so a long answer still reads as prose.
        separator = "\n\n" if sentence % 3 == 0 else " "
        tokens.extend(split_tokens(separator + _FILLER_SENTENCES[sentence % len(_FILLER_SENTENCES)]))
        sentence += 1
    return tuple(tokens[:output_tokens])


def reply_text(*, user_text: str | None, tool_outputs: list[str]) -> str:
    """The natural answer, before any length is imposed; never ends in whitespace (tokens carry only the
    whitespace before them, so the deltas concatenate back to exactly this text)."""
    if tool_outputs:
        text = "The tool returned: " + "; ".join(_shorten(output) for output in tool_outputs) + "."
        if user_text and user_text.strip():
            text += f"\n\nSo, about **{_quote(user_text)}**: that is the answer. Ask if you want more detail."
        return text
    if not user_text or not user_text.strip():
        return "Hello! How can I help you today?"
    seed = stable_hash(user_text)
    return _fill(_TEMPLATES[seed % len(_TEMPLATES)], _fields(user_text, seed))


def reasoning_summary(*, user_text: str | None, tool_outputs: list[str]) -> str:
    """What a reasoning model says it thought about, in the real service's style (a bold title, then a line)."""
    if tool_outputs:
        return "**Reading the tool result**\n\nThe tool answered; I'll report what it returned plainly."
    if not user_text or not user_text.strip():
        return "**Greeting the user**\n\nThere is no question yet, so I'll offer to help."
    seed = stable_hash(user_text)
    fields = _fields(user_text, seed)
    plan = _PLANS[seed % len(_PLANS)]
    return _fill(
        f'**Thinking about {{k1}}**\n\nThe user asks about "{{quote}}". I\'ll {plan}, touching on {{k2}}.', fields
    )


def _fields(user_text: str, seed: int) -> dict[str, str]:
    words = _keywords(user_text)
    language = list(_CODE)[(seed >> 8) % len(_CODE)]
    fields = {"quote": _quote(user_text), "language": language}
    for index, word in enumerate(words, start=1):
        fields[f"k{index}"] = word
        fields[f"K{index}"] = word[:1].upper() + word[1:]
    first, second = words[0], words[1]
    function = f"{first}_{second}" if language != "javascript" else first + second[:1].upper() + second[1:]
    fields["code"] = _fill(_CODE[language], {**fields, "function": function})
    return fields


def keywords(text: str) -> list[str]:
    """Three words an answer about `text` can repeat (structured answers use them as topics)."""
    return _keywords(text)


def _keywords(text: str) -> list[str]:
    """The first three distinct words worth repeating, topped up with neutral ones."""
    words: list[str] = []
    for match in _WORD.finditer(text):
        word = match.group(0).lower()
        if word not in COMMON_WORDS and word not in words:
            words.append(word)
            if len(words) == 3:
                return words
    return words + [word for word in _FALLBACK_WORDS if word not in words][: 3 - len(words)]


def _fill(template: str, fields: dict[str, str]) -> str:
    # Not str.format: code in the templates has braces of its own.
    return _FIELD.sub(lambda match: fields.get(match.group(1), match.group(0)), template)


def _quote(text: str) -> str:
    """The user's words, shortened, without closing punctuation (the template adds its own), and escaped so
    that their Markdown characters show as typed."""
    return _MARKDOWN_INLINE.sub(r"\\\1", _shorten(text).rstrip(".!?;:,") or "this")


def _shorten(text: str) -> str:
    tokens = split_tokens(" ".join(text.split()))
    shortened = "".join(tokens[:_QUOTE_MAX_TOKENS]).strip()
    return shortened + (" …" if len(tokens) > _QUOTE_MAX_TOKENS else "")


def reasoning_tokens(*, model: str, effort: str | None, seed_text: str) -> int:
    """Hidden reasoning for reasoning models (gpt-5*, o*): a count, never text."""
    if not is_reasoning_model(model) or effort == "none":
        return 0
    base = {"minimal": 8, "low": 32, "high": 192, "xhigh": 256}.get(effort or "medium", 64)
    return base + stable_hash(seed_text) % 32


def is_reasoning_model(model: str) -> bool:
    return model.startswith(("gpt-5", "o"))


@dataclass(frozen=True, slots=True)
class FunctionTool:
    name: str
    parameters: JsonObject | None


def tools_to_call(
    *, tools: list[FunctionTool], tool_choice: Any, user_text: str, parallel: bool, has_tool_outputs: bool
) -> list[FunctionTool]:
    """Which function tools the model calls this turn.

    A tool is called when the newest user message names it (and no tool output is being answered), when
    `tool_choice` names it, or when `tool_choice` is "required".
    """
    if not tools or tool_choice == "none":
        return []
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        return [tool for tool in tools if tool.name == tool_choice.get("name")][:1]
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "allowed_tools":
        allowed = {entry.get("name") for entry in tool_choice.get("tools") or [] if isinstance(entry, dict)}
        tools = [tool for tool in tools if tool.name in allowed]
        required = tool_choice.get("mode") == "required"
    else:
        required = tool_choice == "required"
    named = [] if has_tool_outputs else [tool for tool in tools if _mentions(user_text, tool.name)]
    if not named and required and tools:
        named = tools[:1]
    return named if parallel else named[:1]


def _mentions(text: str, name: str) -> bool:
    lowered = text.lower()
    return name.lower() in lowered or name.replace("_", " ").lower() in lowered


def function_arguments(tool: FunctionTool, user_text: str) -> str:
    """Arguments that fit the tool's JSON schema: every required property gets a value from the message."""
    schema = tool.parameters
    if schema is None:
        return orjson.dumps({"query": user_text}).decode()
    properties = schema.get("properties") or {}
    required = schema.get("required")
    names = required if isinstance(required, list) else list(properties)
    arguments = {name: _value_for(properties.get(name) or {}, user_text) for name in names}
    return orjson.dumps(arguments).decode()


def _value_for(schema: JsonObject, user_text: str) -> object:
    if "default" in schema:
        # A strict schema lists every property as required; one with a default is the model's to leave as is.
        return schema["default"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return user_text
