"""Prompt styles (a registry, as in litgpt): how a conversation or an instruction becomes model text.

Each style renders a list of messages ({"role": system|user|assistant, "content": ...}) into segments of
(text, trained) so that fine-tuning can put the loss on the assistant's part only, and renders a prompt that ends
where the assistant's answer should begin, for inference."""
from __future__ import annotations

from dataclasses import dataclass

from lmforge.errors import LmforgeError

Message = dict[str, str]


@dataclass(frozen=True)
class PromptStyle:
    name: str
    special_tokens: tuple[str, ...]  # tokens the tokenizer must know as single, never-split ids
    stop: tuple[str, ...]  # text that ends an assistant turn
    eos_after_reply: bool = False  # the tokenizer's EOS follows (and is trained with) each reply, e.g. Alpaca
    markers: tuple[str, ...] = ()  # template text a well-behaved reply never contains (smoke test: off-template)

    def segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        raise NotImplementedError

    def prompt(self, messages: list[Message]) -> str:
        """Text for inference: the conversation so far, ending where the assistant's reply begins."""
        return "".join(text for text, _ in self.segments(messages)) + self.assistant_prefix()

    def assistant_prefix(self) -> str:
        raise NotImplementedError


class ChatML(PromptStyle):
    """<|im_start|>role\\ncontent<|im_end|>\\n ... ; the assistant's content and its <|im_end|> are trained."""

    def __init__(self) -> None:
        super().__init__("chatml", ("<|im_start|>", "<|im_end|>"), ("<|im_end|>",),
                         markers=("<|im_start|>", "<|im_end|>"))

    def segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        for m in messages:
            if m["role"] == "assistant":
                out.append(("<|im_start|>assistant\n", False))
                out.append((m["content"] + "<|im_end|>", True))
                out.append(("\n", False))
            else:  # an Alpaca-style `input` rides along in the user turn
                content = m["content"] + (f"\n\n{m['input']}" if m.get("input") else "")
                out.append((f"<|im_start|>{m['role']}\n{content}<|im_end|>\n", False))
        return out

    def assistant_prefix(self) -> str:
        return "<|im_start|>assistant\n"


ALPACA_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
ALPACA_HEADER_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n")


class Alpaca(PromptStyle):
    """The Stanford Alpaca template, with and without an input. A user message is the instruction; its optional
    `input` (Alpaca `input`, Dolly `context`) is carried by the instruction loader. System messages are dropped.
    Each reply is followed by the tokenizer's EOS, which is trained (eos_after_reply)."""

    def __init__(self) -> None:
        super().__init__("alpaca", (), ("### Instruction:",), eos_after_reply=True,
                         markers=("### Instruction:", "### Input:", "### Response:"))

    @staticmethod
    def render_instruction(instruction: str, input_text: str = "") -> str:
        if input_text:
            return f"{ALPACA_HEADER_INPUT}### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
        return f"{ALPACA_HEADER}### Instruction:\n{instruction}\n\n### Response:\n"

    def segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        for m in messages:
            if m["role"] == "user":
                out.append((self.render_instruction(m["content"], m.get("input", "")), False))
            elif m["role"] == "assistant":
                out.append((m["content"], True))
        return out

    def assistant_prefix(self) -> str:
        return ""


class Plain(PromptStyle):
    """'User: ...\nAssistant: ...' lines, for a model without chat special tokens (e.g. a base model being served)."""

    def __init__(self) -> None:
        super().__init__("plain", (), ("\nUser:",))

    def segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        for m in messages:
            if m["role"] == "assistant":
                out.append(("Assistant:", False))
                out.append((f" {m['content']}\n", True))
            else:
                out.append((f"{m['role'].capitalize()}: {m['content']}\n", False))
        return out

    def assistant_prefix(self) -> str:
        return "Assistant:"


PROMPT_STYLES: dict[str, PromptStyle] = {s.name: s for s in (ChatML(), Alpaca(), Plain())}


def get_prompt_style(name: str) -> PromptStyle:
    if name not in PROMPT_STYLES:
        raise LmforgeError(f"unknown prompt style '{name}' (known: {', '.join(PROMPT_STYLES)})")
    return PROMPT_STYLES[name]
