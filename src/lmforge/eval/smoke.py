"""The smoke test: a fixed prompt suite (story openings, instructions, questions, a small code prompt) sampled at two
temperatures, each answer judged OK / WEAK / FAIL by simple rules anyone can read:

  FAIL  empty answer (no word characters), or the prompt does not fit the context
  FAIL  degenerate repetition: distinct word 3-gram ratio < 0.3 (of 12+ words)
  FAIL  code prompt whose answer does not parse with `ast` even without its last (possibly cut) line
  WEAK  repetitive: distinct word 3-gram ratio < 0.6
  WEAK  very short: fewer than 3 words
  WEAK  garbled: fewer than 70% of the whitespace-separated pieces look like words (not for code)
  WEAK  no stop: a templated (chat / instruction) answer ran to max_new_tokens without ending its turn
  WEAK  off-template: the answer contains template markers (it started a new turn instead of ending)
  WEAK  code that parses only after dropping its last line
  OK    none of the above

With a prompt style (a fine-tuned run) every prompt is sent as a user message through the template; without one
(a base model) the raw text continuation is used. The seed card's run scored "9 OK / 3 WEAK / 0 FAIL" this way."""
from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass, field

from lmforge.data.instruct import prompt_ids
from lmforge.data.templates import PromptStyle
from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams

VERDICTS = ("OK", "WEAK", "FAIL")
TEMPERATURES = (0.3, 0.8)


@dataclass(frozen=True)
class SmokePrompt:
    id: str
    kind: str  # story / instruction / question / code
    raw: str  # for a base model: text to continue
    message: str  # for a fine-tuned model: the user's message


SUITE: tuple[SmokePrompt, ...] = (
    SmokePrompt("story-village", "story", "Once upon a time, in a small village near the mountains,",
                "Write a short story that begins: Once upon a time, in a small village near the mountains,"),
    SmokePrompt("story-dog", "story", "Tom had a little dog named Max. One day, Max found",
                "Tell a short story about a little dog named Max who finds something in the park."),
    SmokePrompt("instruct-rainy", "instruction", "Here are three things to do on a rainy day:\n1.",
                "List three things to do on a rainy day."),
    SmokePrompt("question-sky", "question", "Question: Why is the sky blue?\nAnswer:", "Why is the sky blue?"),
    SmokePrompt("question-plants", "question", "Question: What do plants need to grow?\nAnswer:",
                "What do plants need to grow?"),
    SmokePrompt("code-fib", "code", "def fibonacci(n):",
                "Write a Python function fibonacci(n) that returns the n-th Fibonacci number."),
)


@dataclass
class SmokeResult:
    id: str
    kind: str
    temperature: float
    prompt: str
    output: str
    finish_reason: str
    distinct_3gram: float
    verdict: str
    reasons: list[str] = field(default_factory=list)


def distinct_ngram_ratio(text: str, n: int = 3) -> float:
    """Distinct word n-grams / all word n-grams (1.0 for text too short to have any)."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


WORD = re.compile(r"^[\"'(\[*-]*[A-Za-z]+(?:['’-][A-Za-z]+)*[.,!?;:\"')\]*]*$|^\d+[.,)%:]*$")


def word_like_ratio(text: str) -> float:
    """Share of whitespace-separated pieces that look like words (letters with optional punctuation around)."""
    pieces = text.split()
    return sum(bool(WORD.match(p)) for p in pieces) / len(pieces) if pieces else 1.0


def extract_code(prompt: SmokePrompt, output: str, templated: bool) -> str:
    if not templated:
        return prompt.raw + output
    fence = re.search(r"```(?:python|py)?\n(.*?)(?:```|$)", output, re.S)
    if fence:
        return fence.group(1)
    start = output.find("def ")
    return output[start:] if start != -1 else output


def _function_only(code: str) -> str:
    """The code up to the first non-indented line after the first (the end of the function's body)."""
    lines = code.strip("\n").splitlines()
    out = lines[:1]
    for line in lines[1:]:
        if line.strip() and not line[0].isspace():
            break
        out.append(line)
    return "\n".join(out)


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def judge(prompt: SmokePrompt, output: str, finish_reason: str, style: PromptStyle | None,
          ) -> tuple[str, list[str], float]:
    """-> (verdict, reasons, distinct 3-gram ratio)."""
    fail, weak = [], []
    words = re.findall(r"\w+", output)
    ratio = distinct_ngram_ratio(output)
    if not words:
        fail.append("empty")
    elif len(words) >= 12 and ratio < 0.3:
        fail.append(f"degenerate repetition (distinct 3-grams {ratio:.2f})")
    elif len(words) >= 12 and ratio < 0.6:
        weak.append(f"repetitive (distinct 3-grams {ratio:.2f})")
    if words and len(words) < 3:
        weak.append("very short")
    if prompt.kind != "code" and len(words) >= 3 and word_like_ratio(output) < 0.7:
        weak.append(f"garbled (only {word_like_ratio(output):.0%} of the pieces are words)")
    if style is not None:
        if finish_reason != "stop":
            weak.append("no stop")
        markers = [m for m in style.markers if m in output]
        if markers:
            weak.append("off-template (" + ", ".join(markers) + ")")
    if prompt.kind == "code" and words:
        code = _function_only(extract_code(prompt, output, style is not None))
        if not _parses(code):
            shorter = "\n".join(code.splitlines()[:-1])
            if shorter.strip() and "def " in shorter and _parses(shorter):
                weak.append("code parses only without its last line")
            else:
                fail.append("code does not parse")
    verdict = "FAIL" if fail else "WEAK" if weak else "OK"
    return verdict, fail + weak, ratio


def run_smoke(engine: Engine, style: PromptStyle | None, system_prompt: str = "", max_new_tokens: int = 120,
              temperatures: tuple[float, ...] = TEMPERATURES, top_k: int = 40, seed: int = 1234,
              suite: tuple[SmokePrompt, ...] = SUITE) -> list[SmokeResult]:
    results = []
    for temp in temperatures:
        for p in suite:
            if style is None:
                ids, stop = engine.tokenizer.encode(p.raw), []
            else:
                system = [{"role": "system", "content": system_prompt}] if system_prompt else []
                ids = prompt_ids(system + [{"role": "user", "content": p.message}], style, engine.tokenizer)
                stop = list(style.stop)
            room = engine.context - len(ids)
            shown = p.raw if style is None else p.message
            if room < 2:
                results.append(SmokeResult(p.id, p.kind, temp, shown, "", "none", 1.0, "FAIL",
                                           [f"prompt needs {len(ids)} tokens; the context is {engine.context}"]))
                continue
            params = SamplingParams(max_new_tokens=max(1, min(max_new_tokens, room - 1)), temperature=temp,
                                    top_k=top_k, stop=stop, seed=seed)
            out = engine.complete(ids, params)
            verdict, reasons, ratio = judge(p, out.text, out.finish_reason, style)
            results.append(SmokeResult(p.id, p.kind, temp, shown, out.text, out.finish_reason, round(ratio, 3), verdict, reasons))
    return results


def summarize(results: list[SmokeResult]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in results) for v in VERDICTS}


def summary_line(results: list[SmokeResult]) -> str:
    s = summarize(results)
    return " / ".join(f"{s[v]} {v}" for v in VERDICTS)


def table(results: list[SmokeResult], width: int = 60) -> str:
    rows = [f"{'prompt':<16} {'temp':>4}  {'verdict':<7} {'output':<{width}}  why"]
    for r in results:
        text = r.output.replace("\n", " ").strip()
        text = text if len(text) <= width else text[: width - 3] + "..."
        rows.append(f"{r.id:<16} {r.temperature:>4.1f}  {r.verdict:<7} {text:<{width}}  {'; '.join(r.reasons)}")
    return "\n".join(rows)


def report(results: list[SmokeResult], run: str, checkpoint: str, style: PromptStyle | None,
           max_new_tokens: int, top_k: int, seed: int) -> dict:
    """The JSON written next to the run (smoke.json) for the model card."""
    return {
        "run": run, "checkpoint": checkpoint, "prompt_style": style.name if style else None,
        "sampling": {"temperatures": sorted({r.temperature for r in results}), "top_k": top_k,
                     "max_new_tokens": max_new_tokens, "seed": seed},
        "summary": summarize(results), "summary_line": summary_line(results),
        "rules": __doc__.split("\n\n")[1].strip(),
        "results": [asdict(r) for r in results],
    }
