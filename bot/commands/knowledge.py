"""`supportloop kb add|list|remove|search`: the knowledge base that grounds answers. Files are read and
checked first (a bad one stops the command before anything is written, naming it), then each document
is embedded and stored in its own transaction; an unchanged file is skipped, a changed one has its
passages replaced. Running servers pick the change up at their next question."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bot.commands.settings import load_settings


def _url(path: Path, root: Path, base_url: str | None) -> str:
    if not base_url:
        return ""
    relative = path.relative_to(root) if root.is_dir() else Path(path.name)
    return base_url.rstrip("/") + "/" + relative.as_posix()


def _read(paths: list[Path], base_url: str | None) -> list:
    from feedback.knowledge import find_files, read_document

    documents = []
    for root in paths:
        for path in find_files([root]):
            documents.append(read_document(path, _url(path, root, base_url)))
    return documents


def cmd_add(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from bot.runtime.interface import ingest, load_embedder
    from feedback.db import open_store
    from feedback.knowledge import KnowledgeError

    try:
        documents = _read(args.paths, args.base_url)
    except KnowledgeError as exc:
        print(f"error: {exc}; nothing was added", file=sys.stderr)
        return 2
    source = args.source or args.paths[0].resolve().name
    settings = load_settings()
    embedder, store = load_embedder(settings.embedding_model), open_store(settings.db_url)
    started = time.perf_counter()
    try:
        bar = tqdm(documents, desc=f"kb add {source}", unit="doc", disable=args.quiet)
        done = ingest(store, embedder, source, bar, lambda done: bar.set_postfix(passages=done.passages))
    finally:
        store.dispose()
    seconds, outcomes, passages = time.perf_counter() - started, done.outcomes, done.passages
    print(f"source {source!r}: {outcomes['added']} added, {outcomes['replaced']} replaced, "
          f"{outcomes['unchanged']} unchanged; {passages} passages embedded in {seconds:.1f} s "
          f"({passages / seconds if seconds else 0:.0f} passages/s)")  # fmt: skip
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from feedback.db import open_store
    from feedback.knowledge import list_sources

    store = open_store(load_settings().db_url)
    try:
        with store.session() as session:
            sources = list_sources(session)
    finally:
        store.dispose()
    print(f"{'source':<32} {'documents':>9} {'passages':>9}  updated")
    for row in sources:
        print(f"{row.source:<32} {row.documents:>9} {row.chunks:>9}  {row.updated_at:%Y-%m-%d %H:%M}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from feedback.db import open_store
    from feedback.knowledge import remove_source

    store = open_store(load_settings().db_url)
    try:
        with store.session() as session:
            removed = remove_source(session, source=args.source)
    finally:
        store.dispose()
    if not removed:
        print(f"error: no source named {args.source!r} (see `supportloop kb list`)", file=sys.stderr)
        return 1
    print(f"source {args.source!r}: {removed} documents removed")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from bot.runtime.interface import Retriever, load_embedder
    from feedback.db import open_store

    settings = load_settings()
    store = open_store(settings.db_url)
    try:
        hits = Retriever(store, load_embedder(settings.embedding_model)).search(args.query, args.k)
    finally:
        store.dispose()
    for rank, hit in enumerate(hits, 1):
        mark = "" if hit.score >= settings.kb_min_score else "  (below SUPPORTLOOP_KB_MIN_SCORE: not used)"
        print(f"{rank}. {hit.score:.3f}  {hit.title}{mark}\n   {hit.text[:300].replace(chr(10), ' ')}")
    if not hits:
        print("the knowledge base is empty (supportloop kb add PATH)")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    kb = commands.add_parser("kb", help="the knowledge base that grounds answers").add_subparsers(
        dest="kb_command", required=True, metavar="ACTION"
    )
    add = kb.add_parser(
        "add",
        help="ingest Markdown, HTML, text and FAQ (CSV/JSONL question,answer) files or folders",
        description="Read, chunk, embed and store the files (folders recursively). Re-adding an unchanged "
        "file does nothing; a changed one has its passages replaced.",
    )
    add.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    add.add_argument("--source", help="the source's name (default: the first PATH's name)")
    add.add_argument("--base-url", help="where the files are published: cited as BASE_URL/relative/path")
    add.add_argument("--quiet", action="store_true", help="no progress bar")
    add.set_defaults(func=cmd_add)
    kb.add_parser("list", help="sources with their documents and passages").set_defaults(func=cmd_list)
    remove = kb.add_parser("remove", help="remove a source's documents and passages")
    remove.add_argument("source")
    remove.set_defaults(func=cmd_remove)
    search = kb.add_parser("search", help="the passages a question would retrieve, with their scores")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="how many (default 5)")
    search.set_defaults(func=cmd_search)
