"""A multi-turn conversation over the Engine: history, system prompt, the run's prompt style, and a context budget
(the oldest exchanges are dropped when the conversation no longer fits). The REPL front end is commands/chat.py."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator

from lmforge.data.instruct import prompt_ids
from lmforge.data.templates import Message, PromptStyle, get_prompt_style
from lmforge.errors import LmforgeError
from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams


def run_prompt_style(config, override: str = "") -> PromptStyle:
    """The template a run was fine-tuned with (config.sft.prompt_style), unless overridden."""
    name = override or getattr(getattr(config, "sft", None), "prompt_style", "")
    if not name:
        raise LmforgeError("this run records no prompt style (it was not fine-tuned with `lmforge sft`); "
                           "pass --template chatml or --template alpaca to chat with it anyway")
    return get_prompt_style(name)


class ChatSession:
    def __init__(self, engine: Engine, style: PromptStyle, system_prompt: str = "",
                 params: SamplingParams | None = None) -> None:
        self.engine, self.style = engine, style
        self.system_prompt = system_prompt
        params = params or SamplingParams()
        self.params = replace(params, stop=list(dict.fromkeys([*style.stop, *params.stop])))
        self.history: list[Message] = []  # user / assistant messages, oldest first
        self.last_prompt: list[int] = []  # the token ids of the latest prompt (for --show-prompt and tests)
        self.dropped = 0  # exchanges dropped so far to fit the context

    def reset(self) -> None:
        self.history.clear()
        self.dropped = 0

    def set_system(self, text: str) -> None:
        self.system_prompt = text

    def _messages(self, history: list[Message]) -> list[Message]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + history

    def build_prompt(self, user_text: str) -> list[int]:
        """Prompt ids for the next reply; drops the oldest exchanges until there is room for a reply."""
        context = self.engine.context
        room = max(1, min(self.params.max_new_tokens, context // 2))
        history = self.history + [{"role": "user", "content": user_text}]
        while True:
            ids = prompt_ids(self._messages(history), self.style, self.engine.tokenizer)
            if len(ids) + room <= context or len(history) == 1:
                break
            history = history[2:] if len(history) > 2 else history[1:]
            self.dropped += 1
        if len(ids) >= context:
            raise LmforgeError(f"the message needs {len(ids)} tokens with the template; the model's context is "
                               f"{context}: shorten it (or the system prompt)")
        self.history = history[:-1]
        return ids

    def send(self, user_text: str) -> Iterator[str]:
        """Stream the reply to `user_text`; when it ends, both turns join the history."""
        ids = self.build_prompt(user_text)
        self.last_prompt = ids
        pieces = []
        for delta in self.engine.stream(ids, self.params):
            pieces.append(delta)
            yield delta
        self.history += [{"role": "user", "content": user_text},
                         {"role": "assistant", "content": "".join(pieces).strip()}]

    def reply(self, user_text: str) -> str:
        return "".join(self.send(user_text))
