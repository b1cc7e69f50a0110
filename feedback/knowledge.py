"""The knowledge base's files and passages (torch-free: embeddings arrive as float32 bytes).

Reading: Markdown (`.md`), HTML (`.html`, `.htm`; scripts and styles dropped, headings kept), plain text
(`.txt`), and FAQ tables, CSV or JSONL with `question` and `answer` (`.csv`, `.jsonl`). A file that is
missing, unreadable, not UTF-8 text, empty or over `MAX_FILE_BYTES` is refused with a `KnowledgeError`
naming it, before anything is written.

Chunking: documents split at their headings into sections, and a section into paragraphs (blank lines).
Paragraphs are packed into passages of at most `CHUNK_CHARS` characters; a passage after the first of
a section starts with the previous passage's last paragraph when that is at most `OVERLAP_CHARS` long
(so an answer that spans two paragraphs is whole in one passage). A paragraph longer than `CHUNK_CHARS`
is cut at spaces into windows that overlap by `OVERLAP_CHARS`. An FAQ row is one passage: its question
is the title, "question\\nanswer" the text. Every passage's title is the document's title, then the
section's heading.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from feedback.models import KnowledgeChunk, KnowledgeDocument, utcnow

CHUNK_CHARS = 800
OVERLAP_CHARS = 200
MAX_FILE_BYTES = 5 * 1024 * 1024
SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".txt": "text",
            ".csv": "faq", ".jsonl": "faq"}  # fmt: skip
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


class KnowledgeError(ValueError):
    """A file that cannot go into the knowledge base; the message names it and says why."""


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


@dataclass(frozen=True)
class Document:
    path: str  # the file it was read from (with its source, what identifies it)
    url: str  # where customers can read it, or ""
    title: str
    content_hash: str
    passages: list[Passage]


# ---- reading ------------------------------------------------------------------------------------


def find_files(paths: list[Path]) -> list[Path]:
    """The supported files among `paths`, folders searched recursively, in name order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.suffix.lower() not in SUFFIXES:
            raise KnowledgeError(f"{path}: unsupported file type; use {', '.join(sorted(SUFFIXES))}")
        else:
            found.append(path)
    return found


def read_document(path: Path, url: str = "") -> Document:
    """A file's passages, or a `KnowledgeError` naming it."""
    return parse_document(_read_bytes(path), path, url, key=str(path.resolve()))


def parse_document(data: bytes, path: Path, url: str = "", *, key: str) -> Document:
    """The passages of a file's bytes (`path` names it in errors and picks the parser by its suffix); `key`
    identifies the document within its source (re-adding the same key replaces it)."""
    if path.suffix.lower() not in SUFFIXES:
        raise KnowledgeError(f"{path}: unsupported file type; use {', '.join(sorted(SUFFIXES))}")
    if len(data) > MAX_FILE_BYTES:
        raise KnowledgeError(f"{path}: {len(data):,} bytes; the limit is {MAX_FILE_BYTES:,}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise KnowledgeError(f"{path}: not UTF-8 text (a binary file?)") from None
    if "\x00" in text:
        raise KnowledgeError(f"{path}: not text (it contains NUL bytes)")
    kind = SUFFIXES[path.suffix.lower()]
    title, passages = _PARSERS[kind](text, path)
    if not passages:
        raise KnowledgeError(f"{path}: no text to ingest (empty)")
    return Document(key, url, title, "sha256:" + hashlib.sha256(data).hexdigest(), passages)


def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise KnowledgeError(f"{path}: {size:,} bytes; the limit is {MAX_FILE_BYTES:,}")
        return path.read_bytes()
    except OSError as exc:
        raise KnowledgeError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _markdown(text: str, path: Path) -> tuple[str, list[Passage]]:
    sections: list[tuple[str, list[str]]] = [("", [])]
    title = ""
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            title = title or (heading.group(2) if len(heading.group(1)) == 1 else "")
            sections.append((heading.group(2), []))
        else:
            sections[-1][1].append(line)
    title = title or path.stem.replace("-", " ").replace("_", " ")
    return title, _sections_to_passages(title, [(h, "\n".join(lines)) for h, lines in sections])


def _plain(text: str, path: Path) -> tuple[str, list[Passage]]:
    title = path.stem.replace("-", " ").replace("_", " ")
    return title, _sections_to_passages(title, [("", text)])


class _HTMLText(HTMLParser):
    """HTML reduced to Markdown-like text: headings as `#` lines, blocks as paragraphs, no scripts."""

    BLOCKS = frozenset({"p", "div", "li", "tr", "br", "section", "article", "table", "ul", "ol", "dd", "dt", "pre"})
    SKIP = frozenset({"script", "style", "noscript", "template", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIP:
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCKS:
            self.out.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCKS:
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data.strip()
        elif not self._skip:
            self.out.append(re.sub(r"\s+", " ", data))


def _html(text: str, path: Path) -> tuple[str, list[Passage]]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    lines = "\n".join(line.strip() for line in "".join(parser.out).splitlines())
    title, passages = _markdown(lines, path)
    return parser.title or title, passages


def _faq(text: str, path: Path) -> tuple[str, list[Passage]]:
    rows = _faq_rows(text, path)
    passages = []
    for number, row in enumerate(rows, start=1):
        question, answer = str(row.get("question") or "").strip(), str(row.get("answer") or "").strip()
        if not question or not answer:
            raise KnowledgeError(f"{path}: row {number} needs a non-empty question and answer")
        passages.append(Passage(question, f"{question}\n{answer}"))
    return path.stem.replace("-", " ").replace("_", " "), passages


def _faq_rows(text: str, path: Path) -> list[dict[str, object]]:
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not {"question", "answer"} <= set(reader.fieldnames or ()):
            raise KnowledgeError(f"{path}: a CSV FAQ needs the columns question and answer")
        return list(reader)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise KnowledgeError(f"{path}: line {number} is not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise KnowledgeError(f"{path}: line {number} is not a JSON object")
        rows.append(row)
    return rows


_PARSERS = {"markdown": _markdown, "text": _plain, "html": _html, "faq": _faq}


# ---- chunking -----------------------------------------------------------------------------------


def _sections_to_passages(title: str, sections: list[tuple[str, str]]) -> list[Passage]:
    passages = []
    for heading, body in sections:
        label = f"{title} › {heading}" if heading and heading != title else title
        paragraphs = [re.sub(r"\s*\n\s*", " ", p).strip() for p in re.split(r"\n\s*\n", body)]
        passages += [Passage(label, text) for text in chunk_paragraphs([p for p in paragraphs if p])]
    return passages


def chunk_paragraphs(paragraphs: list[str]) -> list[str]:
    """Pack paragraphs into passages of at most `CHUNK_CHARS`, with the overlap described above."""
    pieces = [piece for p in paragraphs for piece in _windows(p)]
    chunks: list[list[str]] = []
    for piece in pieces:
        if chunks and len("\n\n".join([*chunks[-1], piece])) <= CHUNK_CHARS:
            chunks[-1].append(piece)
            continue
        carried = chunks[-1][-1:] if chunks and len(chunks[-1]) > 1 else []
        if carried and (len(carried[0]) > OVERLAP_CHARS or len(carried[0]) + len(piece) + 2 > CHUNK_CHARS):
            carried = []
        chunks.append([*carried, piece])
    return ["\n\n".join(chunk) for chunk in chunks]


def _windows(paragraph: str) -> list[str]:
    if len(paragraph) <= CHUNK_CHARS:
        return [paragraph]
    windows, start = [], 0
    while start < len(paragraph):
        end = min(len(paragraph), start + CHUNK_CHARS)
        if end < len(paragraph):
            end = paragraph.rfind(" ", start + OVERLAP_CHARS, end) if " " in paragraph[start:end] else end
            end = end if end > start + OVERLAP_CHARS else start + CHUNK_CHARS
        windows.append(paragraph[start:end].strip())
        if end >= len(paragraph):
            break
        start = max(end - OVERLAP_CHARS, start + 1)
    return [w for w in windows if w]


# ---- the store ----------------------------------------------------------------------------------


def is_current(session: Session, *, source: str, document: Document, embedding_model: str) -> bool:
    """Whether `document` is stored unchanged (same bytes, URL and embedding model): re-adding it is a no-op."""
    stored = _stored(session, source, document.path)
    unchanged = (document.content_hash, document.url, embedding_model)
    return stored is not None and (stored.content_hash, stored.url, stored.embedding_model) == unchanged


def _stored(session: Session, source: str, path: str) -> KnowledgeDocument | None:
    query = select(KnowledgeDocument).where(KnowledgeDocument.source == source, KnowledgeDocument.path == path)
    return session.exec(query).first()


def store_document(
    session: Session, *, source: str, document: Document, embedding_model: str, embeddings: list[bytes]
) -> str:
    """Add a document, or replace a changed one's passages, in one transaction: "unchanged", "added" or
    "replaced"."""
    if len(embeddings) != len(document.passages):
        raise ValueError(f"{document.path}: {len(embeddings)} embeddings for {len(document.passages)} passages")
    if is_current(session, source=source, document=document, embedding_model=embedding_model):
        return "unchanged"
    stored = _stored(session, source, document.path)
    outcome = "added" if stored is None else "replaced"
    if stored is None:
        stored = KnowledgeDocument(source=source, path=document.path, content_hash="", title="")
    else:
        session.execute(delete(KnowledgeChunk).where(col(KnowledgeChunk.document_id) == stored.id))
    stored.title, stored.url, stored.content_hash = document.title, document.url, document.content_hash
    stored.embedding_model = embedding_model
    stored.updated_at = utcnow()
    session.add(stored)
    session.flush()
    assert stored.id is not None
    for seq, (passage, vector) in enumerate(zip(document.passages, embeddings, strict=True)):
        session.add(
            KnowledgeChunk(document_id=stored.id, seq=seq, title=passage.title, text=passage.text, embedding=vector)
        )
    session.commit()
    return outcome


def remove_source(session: Session, *, source: str) -> int:
    """Remove a source's documents and passages; how many documents went (0: no such source)."""
    ids = list(session.exec(select(KnowledgeDocument.id).where(KnowledgeDocument.source == source)))
    if ids:
        session.execute(delete(KnowledgeChunk).where(col(KnowledgeChunk.document_id).in_(ids)))
        session.execute(delete(KnowledgeDocument).where(col(KnowledgeDocument.id).in_(ids)))
        session.commit()
    return len(ids)


@dataclass(frozen=True)
class SourceSummary:
    source: str
    documents: int
    chunks: int
    updated_at: datetime


def list_sources(session: Session) -> list[SourceSummary]:
    query = (
        select(
            KnowledgeDocument.source,
            func.count(func.distinct(KnowledgeDocument.id)),
            func.count(col(KnowledgeChunk.id)),
            func.max(KnowledgeDocument.updated_at),
        )
        .join(KnowledgeChunk, col(KnowledgeChunk.document_id) == KnowledgeDocument.id, isouter=True)
        .group_by(KnowledgeDocument.source)
        .order_by(KnowledgeDocument.source)
    )
    return [SourceSummary(*row) for row in session.exec(query)]


@dataclass(frozen=True)
class StoredPassage:
    chunk_id: int
    title: str
    url: str
    text: str
    embedding: bytes


def load_passages(session: Session, *, embedding_model: str) -> list[StoredPassage]:
    """Every passage embedded with `embedding_model` (others would not compare), in a stable order."""
    query = (
        select(KnowledgeChunk, KnowledgeDocument.url)
        .join(KnowledgeDocument, col(KnowledgeDocument.id) == KnowledgeChunk.document_id)
        .where(KnowledgeDocument.embedding_model == embedding_model)
        .order_by(col(KnowledgeChunk.id))
    )
    return [
        StoredPassage(_id(chunk.id), chunk.title, url, chunk.text, chunk.embedding)
        for chunk, url in session.exec(query)
    ]


def _id(value: int | None) -> int:
    assert value is not None  # stored rows have ids
    return value


def fingerprint(session: Session) -> tuple[int, datetime | None]:
    """Changes whenever a document is added, replaced or removed: (documents, newest update)."""
    row = session.exec(select(func.count(col(KnowledgeDocument.id)), func.max(KnowledgeDocument.updated_at))).one()
    return int(row[0]), row[1]
