"""`lmforge chat RUN`: a terminal chat with a fine-tuned model, streaming replies. The template comes from the run
(sft.prompt_style). Commands: /reset, /system TEXT, /exit. From a pipe, each input line is one user message and
only the replies are printed (one after another, each followed by a newline)."""
from __future__ import annotations

import argparse
import sys

from lmforge.commands.common import add_sampling_args, sampling_params

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat with a fine-tuned model in the terminal (or through a pipe)")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--system", default=None, help="system prompt (default: the run's sft.system_prompt)")
    p.add_argument("--template", default="", help="prompt style to use instead of the run's (chatml, alpaca)")
    p.add_argument("--show-prompt", action="store_true", help="print each full prompt to stderr")
    add_sampling_args(p, max_new_tokens=256)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.checkpoint import load_model
    from lmforge.inference import Engine
    from lmforge.inference.chat import ChatSession, run_prompt_style

    lm = load_model(args.run, args.device)
    style = run_prompt_style(lm.config, args.template)
    system = args.system if args.system is not None else lm.config.sft.system_prompt
    session = ChatSession(Engine(lm.model, lm.tokenizer), style, system, sampling_params(args))
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {lm.checkpoint} ({style.name} template, context {session.engine.context} tokens); "
              f"{HELP}")
    while True:
        try:
            line = input(">>> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and not line:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                session.reset()
                if interactive:
                    print("(conversation cleared)")
            elif cmd == "/system":
                session.set_system(rest.strip())
                if interactive:
                    print(f"(system prompt {'set' if rest.strip() else 'cleared'})")
            else:
                print(HELP, file=sys.stderr)
            continue
        dropped = session.dropped
        stream = session.send(line)
        first = next(stream, "")  # build_prompt has run: the prompt exists now
        if args.show_prompt:
            print(f"--- prompt ---\n{lm.tokenizer.decode(session.last_prompt)}\n--- end prompt ---",
                  file=sys.stderr, flush=True)
        if session.dropped > dropped and interactive:
            print(f"(dropped {session.dropped - dropped} oldest exchange(s) to fit the context)")
        sys.stdout.write(first)
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0
