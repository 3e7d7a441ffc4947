"""The tokenizer half of a Hugging Face export: files that `transformers.AutoTokenizer.from_pretrained` loads as a
`PreTrainedTokenizerFast` without custom code, plus the chat template of fine-tuned runs.

A `tokenizers`-backed lmforge tokenizer ships its own tokenizer.json. A SentencePiece unigram tokenizer is converted
into an equivalent `tokenizers` Unigram model (same pieces and scores, byte fallback, whitespace as '▁', no dummy
prefix: the options lmforge trains it with), so it loads without the `sentencepiece` package; the tests check that
both encode TinyStories text to the same ids."""
from __future__ import annotations

import json
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer
from lmforge.utils.io import atomic_write_json, atomic_write_text

# Jinja chat templates that render exactly what lmforge.data.templates renders for training (tests compare the two).


def _lit(s: str) -> str:
    """A Jinja string literal."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _chatml_template(system_prompt: str = "") -> str:
    default_system = ""
    if system_prompt:  # the run's default system message, used when a conversation brings none
        default_system = ("{% if messages[0]['role'] != 'system' %}"
                          "{{ " + _lit(f"<|im_start|>system\n{system_prompt}<|im_end|>\n") + " }}{% endif %}")
    return (
        default_system
        + "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% else %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
        "{% if message['input'] is defined and message['input'] %}{{ '\\n\\n' + message['input'] }}{% endif %}"
        "{{ '<|im_end|>\\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def _alpaca_template(eos_after_reply: bool) -> str:
    from lmforge.data.templates import ALPACA_HEADER, ALPACA_HEADER_INPUT

    reply_end = " + eos_token" if eos_after_reply else ""  # the EOS that training put after every reply
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        "{% if message['input'] is defined and message['input'] %}"
        "{{ " + _lit(ALPACA_HEADER_INPUT + "### Instruction:\n") + " + message['content'] + "
        + _lit("\n\n### Input:\n") + " + message['input'] + " + _lit("\n\n### Response:\n") + " }}"
        "{% else %}"
        "{{ " + _lit(ALPACA_HEADER + "### Instruction:\n") + " + message['content'] + "
        + _lit("\n\n### Response:\n") + " }}"
        "{% endif %}"
        "{% elif message['role'] == 'assistant' %}{{ message['content']" + reply_end + " }}{% endif %}"
        "{% endfor %}"
    )


def chat_template(style: str, system_prompt: str = "") -> str:
    from lmforge.data.templates import get_prompt_style

    ps = get_prompt_style(style)
    if style == "chatml":
        return _chatml_template(system_prompt)
    if style == "alpaca":
        return _alpaca_template(getattr(ps, "eos_after_reply", False))
    raise LmforgeError(f"no Jinja chat template for prompt style '{style}' yet (known: chatml, alpaca)")


def spm_to_tokenizers(tok: Tokenizer) -> "tokenizers.Tokenizer":  # noqa: F821
    """A SentencePiece unigram model as an equivalent `tokenizers` Unigram tokenizer."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    sp = tok._tok
    proto = pb.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != pb.TrainerSpec.UNIGRAM:
        raise LmforgeError("only SentencePiece unigram models can be exported to Hugging Face format "
                           f"(this one is model_type {spec.model_type})")
    if norm.name not in ("identity", "") or norm.add_dummy_prefix or norm.remove_extra_whitespaces:
        raise LmforgeError(
            f"this SentencePiece model normalizes text (rule '{norm.name}', add_dummy_prefix="
            f"{norm.add_dummy_prefix}, remove_extra_whitespaces={norm.remove_extra_whitespaces}); only the identity "
            "normalization that lmforge trains with converts exactly to a tokenizer.json")
    vocab = [(p.piece, p.score) for p in proto.pieces]
    hf = HFTokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=spec.byte_fallback))
    hf.normalizer = normalizers.Sequence([])  # identity
    # Whitespace becomes '▁' and the whole text goes through one Viterbi pass, as SentencePiece's unigram does.
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    user_defined = [p.piece for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.USER_DEFINED]
    specials = set(tok.special_tokens)
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in user_defined if t in specials])
    hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined if t not in specials])
    return hf


def hf_backend(tok: Tokenizer) -> "tokenizers.Tokenizer":  # noqa: F821
    if tok.kind == "hf":
        return tok._tok
    if tok.kind == "spm":
        return spm_to_tokenizers(tok)
    raise LmforgeError(f"cannot export a '{tok.kind}' tokenizer to Hugging Face format")


def save_hf_tokenizer(tok: Tokenizer, out: Path, max_len: int, prompt_style: str = "",
                      system_prompt: str = "") -> dict:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out`; returns the special-token
    ids the model config and generation config need."""
    backend = hf_backend(tok)
    atomic_write_text(out / "tokenizer.json", backend.to_str(pretty=True))
    eos = tok.eos_token
    unk = None
    if tok.kind == "spm":
        unk = tok._tok.id_to_piece(tok._tok.unk_id())
    specials = {"eos_token": eos, "bos_token": eos, "unk_token": unk or eos, "pad_token": eos}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{k: v for k, v in specials.items() if v is not None},
        "additional_special_tokens": [t for t in tok.special_tokens if t != eos],
        # lmforge never inserts BOS/EOS while encoding, and decodes text verbatim.
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
    }
    if prompt_style:
        config["chat_template"] = chat_template(prompt_style, system_prompt)
    atomic_write_json(out / "tokenizer_config.json", config)
    atomic_write_json(out / "special_tokens_map.json",
                      {k: v for k, v in specials.items() if v is not None}
                      | {"additional_special_tokens": config["additional_special_tokens"]})
    eos_id = tok.eos_id
    end_ids = [eos_id] if eos_id is not None else []
    if prompt_style == "chatml" and tok.token_to_id("<|im_end|>") is not None:
        end_ids.append(tok.token_to_id("<|im_end|>"))  # a chat turn ends with <|im_end|>
    return {"eos_token_id": eos_id, "bos_token_id": eos_id, "pad_token_id": eos_id, "end_ids": end_ids}


def load_hf_tokenizer_dir(directory: Path, eos_token_id: int | None) -> Tokenizer:
    """The tokenizer of a Hugging Face checkpoint directory as an lmforge Tokenizer (tokenizer.json, SentencePiece
    tokenizer.model, or GPT-2 vocab.json + merges.txt), with its end-of-text token taken from the model config."""
    from lmforge.tokenizer.load import load_tokenizer

    if (directory / "tokenizer.json").is_file():
        tok = load_tokenizer(directory / "tokenizer.json")
    elif (directory / "tokenizer.model").is_file():
        tok = load_tokenizer(directory / "tokenizer.model")
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        tok = load_tokenizer(directory)
    else:
        raise LmforgeError(f"{directory}: no tokenizer.json, tokenizer.model or vocab.json + merges.txt to import")
    eos = None
    if isinstance(eos_token_id, list):
        eos_token_id = eos_token_id[0] if eos_token_id else None
    if eos_token_id is not None and eos_token_id < tok.vocab_size:
        eos = tok.id_to_token(eos_token_id)
    cfg_path = directory / "tokenizer_config.json"
    if eos is None and cfg_path.is_file():
        eos_entry = json.loads(cfg_path.read_text()).get("eos_token")
        eos = eos_entry.get("content") if isinstance(eos_entry, dict) else eos_entry
    specials = list(dict.fromkeys(tok.special_tokens + ([eos] if eos else [])))
    return Tokenizer(tok._tok, tok.kind, specials, eos or tok.eos_token)
