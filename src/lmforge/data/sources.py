"""Documents from wherever they live: plain text files (documents separated by a line such as <|endoftext|>),
JSONL(.gz) with a text field, Parquet, directories of those, and Hugging Face datasets ("hf:owner/name[:split]",
streamed so that large corpora are never materialized)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from lmforge.errors import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted(KNOWN_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def iter_text_file(path: Path, separator: str) -> Iterator[str]:
    """Documents separated by lines that hold only `separator` (TinyStories' <|endoftext|> style); with an empty
    separator the whole file is one document."""
    with open(path, encoding="utf-8", errors="strict") as f:
        if not separator:
            text = f.read().strip()
            if text:
                yield text
            return
        lines: list[str] = []
        try:
            for line in f:
                if line.strip() == separator:
                    doc = "".join(lines).strip()
                    if doc:
                        yield doc
                    lines = []
                else:
                    lines.append(line)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
        doc = "".join(lines).strip()
        if doc:
            yield doc


def iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise DataError(f"{path}:{lineno}: no '{text_field}' field (set data.text_field)")
            text = record[text_field]
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: field '{text_field}' is not a string")
            if text.strip():
                yield text.strip()


def iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column '{text_field}' (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text.strip()


def iter_hf_dataset(spec: str, text_field: str, data_files: str | list[str] | None = None) -> Iterator[str]:
    """'owner/name', 'owner/name:split' or 'owner/name:config:split', streamed from the Hugging Face hub (cached).
    `data_files` passes through to `datasets.load_dataset` (also how the builders 'json'/'parquet' read local files)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError("Hugging Face datasets need the `datasets` package: pip install 'lmforge[hf]'") from None
    parts = spec.split(":")
    name, config, split = parts[0], None, "train"
    if len(parts) == 2:
        split = parts[1]
    elif len(parts) == 3:
        config, split = parts[1], parts[2]
    try:
        ds = load_dataset(name, config, split=split, streaming=True, data_files=data_files)
    except Exception as e:
        raise DataError(f"could not open the Hugging Face dataset '{spec}': {e}") from None
    for row in ds:
        text = row.get(text_field)
        if isinstance(text, str) and text.strip():
            yield text.strip()


def iter_code_files(spec: str, suffix: str = ".py") -> Iterator[str]:
    """Every `suffix` file under a directory (sorted, site-packages skipped) as one document; 'stdlib' is the
    running Python's standard library, a real offline Python corpus on any machine."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"]) if spec == "stdlib" else Path(spec)
    if not root.is_dir():
        raise DataError(f"code source: '{root}' is not a directory")
    files = sorted(p for p in root.rglob(f"*{suffix}")
                   if p.is_file() and not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts))
    if not files:
        raise DataError(f"code source: no {suffix} files under {root}")
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):  # a few stdlib test files are deliberately not UTF-8
            continue
        if text.strip():
            yield text


def expand_source(source: str) -> list[Path]:
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source not found: {source}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in KNOWN_SUFFIXES)
        if not files:
            raise DataError(f"{source}: directory has no {', '.join(KNOWN_SUFFIXES)} files")
        return files
    return [path]


def iter_documents(source: str, separator: str = "<|endoftext|>", text_field: str = "text") -> Iterator[str]:
    if source.startswith("hf:"):
        yield from iter_hf_dataset(source[3:], text_field)
        return
    if source.startswith("code:"):  # source files, one document each ("code:stdlib": Python's own standard library)
        yield from iter_code_files(source[5:])
        return
    for path in expand_source(source):
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty")
        kind = _suffix(path)
        if kind in JSONL_SUFFIXES:
            yield from iter_jsonl(path, text_field)
        elif kind in PARQUET_SUFFIXES:
            yield from iter_parquet(path, text_field)
        else:
            yield from iter_text_file(path, separator)


def iter_corpus(sources: list[str], separator: str, text_field: str, max_docs: int = 0) -> Iterator[str]:
    if not sources:
        raise DataError("no data sources given (data.sources or --source)")
    n = 0
    for source in sources:
        for doc in iter_documents(source, separator, text_field):
            yield doc
            n += 1
            if max_docs and n >= max_docs:
                return
