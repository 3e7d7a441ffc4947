"""Chat and instruction data for fine-tuning: ShareGPT / OpenAI-messages conversations and Alpaca / Dolly records,
read into one shape (a list of {"role", "content"[, "input"]} messages) and tokenized into (ids, trained) where only
the assistant's tokens (and its end-of-turn token) are trained.

Bad records are skipped, counted, and the first few are reported by location (file:line for JSONL, file[index] for
a JSON array); a file with no usable record is an error."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lmforge.data.templates import Message, PromptStyle
from lmforge.errors import DataError

FORMATS = ("auto", "sharegpt", "alpaca")
# ShareGPT's `from` values (and the OpenAI `role` values) -> our roles
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "chatgpt": "assistant", "bot": "assistant"}
MAX_REPORTED = 5


@dataclass
class Conversation:
    messages: list[Message]
    where: str  # file:line or file[index]


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (location, reason) of the first few skipped
    formats: dict[str, int] = field(default_factory=dict)  # records per detected format

    def skip(self, where: str, reason: str) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append((where, reason))

    def summary(self) -> str:
        text = f"{self.loaded:,} records loaded, {self.skipped:,} skipped"
        if self.problems:
            text += " (" + "; ".join(f"{w}: {r}" for w, r in self.problems)
            text += ", ...)" if self.skipped > len(self.problems) else ")"
        return text


class BadRecord(ValueError):
    pass


# -- one record -> messages -------------------------------------------------------------------------------------------
def _text(record: dict, key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise BadRecord(f"'{key}' is not a string")
    return value


def _from_sharegpt(turns: Any, role_key: str, text_key: str) -> list[Message]:
    if not isinstance(turns, list) or not turns:
        raise BadRecord("the conversation is empty or not a list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise BadRecord(f"turn {i} lacks '{role_key}' or '{text_key}'")
        role = ROLES.get(str(turn[role_key]).lower())
        if role is None:
            raise BadRecord(f"turn {i} has unknown role '{turn[role_key]}'")
        if not isinstance(turn[text_key], str):
            raise BadRecord(f"turn {i}: '{text_key}' is not a string")
        messages.append({"role": role, "content": turn[text_key]})
    return messages


def _from_alpaca(record: dict) -> list[Message]:
    out_key = next((k for k in ("output", "response") if k in record), None)
    if "instruction" not in record or out_key is None:
        raise BadRecord("missing 'instruction' or 'output'/'response'")
    extra_key = next((k for k in ("input", "context") if k in record), None)
    user: Message = {"role": "user", "content": _text(record, "instruction").strip()}
    if extra_key and _text(record, extra_key).strip():
        user["input"] = record[extra_key].strip()
    return [user, {"role": "assistant", "content": _text(record, out_key).strip()}]


def detect_format(record: dict) -> str | None:
    if "conversations" in record or "messages" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    return None


def record_to_messages(record: Any, fmt: str = "auto") -> tuple[list[Message], str]:
    """-> (messages, detected format); raises BadRecord saying what is wrong."""
    if not isinstance(record, dict):
        raise BadRecord("not a JSON object")
    kind = detect_format(record) if fmt == "auto" else fmt
    if kind == "sharegpt":
        if "conversations" in record:
            messages = _from_sharegpt(record["conversations"], "from", "value")
        elif "messages" in record:
            messages = _from_sharegpt(record["messages"], "role", "content")
        else:
            raise BadRecord("missing 'conversations' or 'messages'")
    elif kind == "alpaca":
        messages = _from_alpaca(record)
    else:
        raise BadRecord("missing fields: neither 'conversations'/'messages' nor 'instruction'")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise BadRecord("no assistant turn")
    return messages, kind


# -- files -> records --------------------------------------------------------------------------------------------------
def _iter_file(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed record or a BadRecord) for a JSON array / object-of-list file or a JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if text.lstrip().startswith("["):
                raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
            data = None  # not one JSON document: read it as JSONL below
        if data is not None:
            if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
                lists = [v for v in data.values() if isinstance(v, list)]
                data = lists[0] if len(lists) == 1 and not detect_format(data) else [data]
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON array of records")
            for i, rec in enumerate(data):
                yield f"{path}[{i}]", rec
            return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"{path}:{lineno}", BadRecord(f"not JSON ({e.msg})")


def _iter_hf(spec: str) -> Iterator[tuple[str, Any]]:
    """'hf:owner/name[:split]' rows from the Hugging Face hub (e.g. databricks/databricks-dolly-15k)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError("Hugging Face datasets need the `datasets` package: pip install 'lmforge[hf]'") from None
    name, _, split = spec[3:].partition(":")
    try:
        ds = load_dataset(name, split=split or "train", streaming=True)
    except Exception as e:
        raise DataError(f"could not open the Hugging Face dataset '{spec}': {e}") from None
    for i, row in enumerate(ds):
        yield f"{spec}[{i}]", dict(row)


def load_conversations(sources: list[str], fmt: str = "auto", max_records: int = 0,
                       ) -> tuple[list[Conversation], LoadReport]:
    if fmt not in FORMATS:
        raise DataError(f"unknown SFT data format '{fmt}' (known: {', '.join(FORMATS)})")
    if not sources:
        raise DataError("no fine-tuning data given (sft.data)")
    out: list[Conversation] = []
    report = LoadReport()
    for source in sources:
        if source.startswith("hf:"):
            rows = _iter_hf(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise DataError(f"fine-tuning data file not found: {source}")
            rows = _iter_file(path)
        before = len(out)
        for where, record in rows:
            if max_records and len(out) >= max_records:
                break
            try:
                if isinstance(record, BadRecord):
                    raise record
                messages, kind = record_to_messages(record, fmt)
            except BadRecord as e:
                report.skip(where, str(e))
                continue
            report.formats[kind] = report.formats.get(kind, 0) + 1
            out.append(Conversation(messages, where))
        report.loaded = len(out)
        if len(out) == before and not (max_records and before >= max_records):
            raise DataError(f"{source}: no usable record ({report.summary()})")
    report.loaded = len(out)
    return out, report


# -- messages -> tokens -----------------------------------------------------------------------------------------------
@dataclass
class Example:
    ids: list[int]
    trained: list[bool]  # per token: is it a target of the loss (assistant text and its end-of-turn token)?


def encode_turns(messages: list[Message], style: PromptStyle, tokenizer) -> list[Example]:
    """The conversation as consecutive pieces, one per exchange that ends with an assistant reply (a trailing
    un-answered part, if any, is one more piece). Truncation keeps whole pieces."""
    pieces: list[Example] = []
    current = Example([], [])
    segments = style.segments(messages)
    encoded = tokenizer.encode_batch([text for text, _ in segments]) if segments else []
    eos = tokenizer.eos_id
    if style.eos_after_reply and eos is None:
        raise DataError(f"the '{style.name}' prompt style ends replies with EOS, but the tokenizer has no EOS token")
    replied = False  # the current piece holds a reply: it closes at the next segment that is not just whitespace
    for (text, trained), ids in zip(segments, encoded):
        if replied and not trained and not text.strip():  # ChatML's "\n" after <|im_end|> ends the same turn
            current.ids += ids
            current.trained += [False] * len(ids)
            continue
        if replied:
            pieces.append(current)
            current, replied = Example([], []), False
        current.ids += ids
        current.trained += [trained] * len(ids)
        if trained and style.eos_after_reply:
            current.ids.append(eos)
            current.trained.append(True)
        replied = replied or trained
    if current.ids:
        pieces.append(current)
    return pieces


def encode_conversation(messages: list[Message], style: PromptStyle, tokenizer, max_tokens: int) -> Example | None:
    """Tokens of the whole conversation with the loss mask; longer than max_tokens -> the leading exchanges that fit
    (cut at a turn boundary). If even the first exchange does not fit, it is cut at max_tokens when some of its
    reply remains; otherwise None (nothing to train on)."""
    out = Example([], [])
    for piece in encode_turns(messages, style, tokenizer):
        if len(out.ids) + len(piece.ids) > max_tokens:
            if not out.ids:
                out = Example(piece.ids[:max_tokens], piece.trained[:max_tokens])
            break
        out.ids += piece.ids
        out.trained += piece.trained
    # the first token is never a target (nothing predicts it), so at least one later token must be trained
    return out if any(out.trained[1:]) else None


def prompt_ids(messages: list[Message], style: PromptStyle, tokenizer) -> list[int]:
    """Token ids that end where the assistant's next reply begins (for chat / serving): the same encoding as
    training, so the model sees at inference exactly what it was trained on."""
    ids = [i for piece in encode_turns(messages, style, tokenizer) for i in piece.ids]
    prefix = style.assistant_prefix()
    return ids + (tokenizer.encode(prefix) if prefix else [])
