"""The knowledge base's files and passages: reading each format, chunking by headings and paragraphs,
refusing bad files by name, and storing documents (unchanged → no-op, changed → replaced) on SQLite
and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlmodel import select

from feedback.knowledge import (
    CHUNK_CHARS,
    MAX_FILE_BYTES,
    OVERLAP_CHARS,
    KnowledgeError,
    chunk_paragraphs,
    find_files,
    fingerprint,
    is_current,
    list_sources,
    load_passages,
    read_document,
    remove_source,
    store_document,
)
from feedback.models import KnowledgeChunk

CHECKIN = """# A and B Guest House

Our guest house is in the city centre.

## Check-in

Check-in time is from 3:30pm - 9:00pm.

## Pets

No pets are allowed.
"""


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_markdown_passages_follow_headings_with_the_documents_title(tmp_path):
    document = read_document(_write(tmp_path, "a-and-b.md", CHECKIN), url="https://help.example.com/a-and-b")
    assert document.title == "A and B Guest House" and document.url == "https://help.example.com/a-and-b"
    assert [(p.title, p.text) for p in document.passages] == [
        ("A and B Guest House", "Our guest house is in the city centre."),
        ("A and B Guest House › Check-in", "Check-in time is from 3:30pm - 9:00pm."),
        ("A and B Guest House › Pets", "No pets are allowed."),
    ]
    assert document.content_hash.startswith("sha256:")


def test_paragraphs_are_packed_to_the_size_limit_with_a_short_paragraph_carried_over():
    short, long = "Short paragraph.", "word " * 150  # 750 characters
    chunks = chunk_paragraphs([long.strip(), short, long.strip()])
    assert all(len(c) <= CHUNK_CHARS for c in chunks)
    assert chunks[0].endswith(short) and chunks[1].startswith(short)  # the overlap: carried into the next


def test_a_paragraph_longer_than_a_passage_is_cut_into_overlapping_windows():
    text = " ".join(f"w{i:04d}" for i in range(600))  # 3,599 characters, no paragraph breaks
    chunks = chunk_paragraphs([text])
    assert len(chunks) > 4 and all(len(c) <= CHUNK_CHARS for c in chunks)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before[-OVERLAP_CHARS // 2 :] in after  # consecutive windows share their edge
    assert " ".join(chunks).count("w0599") >= 1 and chunks[0].startswith("w0000")


def test_html_is_reduced_to_text_without_scripts_or_styles(tmp_path):
    html = """<html><head><title>Parking</title><style>p {color: red}</style></head><body>
    <h1>Parking</h1><script>alert("x")</script><p>Free parking &amp; EV charging.</p>
    <h2>Hours</h2><p>Open <b>24/7</b>.</p></body></html>"""
    document = read_document(_write(tmp_path, "parking.html", html))
    texts = " ".join(p.text for p in document.passages)
    assert document.title == "Parking" and "Free parking & EV charging." in texts and "Open 24/7." in texts
    assert "alert" not in texts and "color" not in texts
    assert ("Parking › Hours", "Open 24/7.") in [(p.title, p.text) for p in document.passages]


def test_faq_files_give_one_passage_per_question(tmp_path):
    csv = _write(tmp_path, "faq.csv", 'question,answer\nDo you have wifi?,"Yes, free wifi."\n')
    jsonl = _write(tmp_path, "faq.jsonl", '{"question": "Pets?", "answer": "No pets."}\n\n')
    assert [(p.title, p.text) for p in read_document(csv).passages] == [
        ("Do you have wifi?", "Do you have wifi?\nYes, free wifi.")
    ]
    assert [(p.title, p.text) for p in read_document(jsonl).passages] == [("Pets?", "Pets?\nNo pets.")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("binary.md", b"\x00\x01\x02", "not text"),
        ("latin1.txt", "café".encode("latin-1"), "not UTF-8"),
        ("empty.md", b"  \n\n", "empty"),
        ("faq.csv", b"q,a\nx,y\n", "columns question and answer"),
        ("faq.jsonl", b'{"question": "x"}\n', "row 1 needs a non-empty question and answer"),
        ("broken.jsonl", b"{not json\n", "line 1 is not JSON"),
    ],
)
def test_bad_files_are_refused_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(KnowledgeError, match=message) as refused:
        read_document(path)
    assert str(path) in str(refused.value)


def test_oversized_missing_and_unsupported_files_are_refused(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (MAX_FILE_BYTES + 1))
    with pytest.raises(KnowledgeError, match="the limit is"):
        read_document(big)
    with pytest.raises(KnowledgeError, match="cannot be read"):
        read_document(tmp_path / "missing.md")
    with pytest.raises(KnowledgeError, match="unsupported file type"):
        find_files([_write(tmp_path, "slides.pdf", "%PDF")])


def test_folders_are_searched_for_supported_files(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path, "sub/b.md", "b")
    _write(tmp_path, "a.txt", "a")
    _write(tmp_path, "notes.pdf", "%PDF")
    assert [p.name for p in find_files([tmp_path])] == ["a.txt", "b.md"]


def _vectors(count: int) -> list[bytes]:
    return [bytes([i]) * 8 for i in range(count)]


def test_store_adds_skips_unchanged_replaces_changed_and_removes(any_store, tmp_path):
    path = _write(tmp_path, "a-and-b.md", CHECKIN)
    document = read_document(path)
    with any_store.session() as s:
        assert (
            store_document(s, source="help", document=document, embedding_model="m", embeddings=_vectors(3)) == "added"
        )
        stamp = fingerprint(s)
        assert (
            store_document(s, source="help", document=document, embedding_model="m", embeddings=_vectors(3))
            == "unchanged"
        )
        assert fingerprint(s) == stamp and is_current(s, source="help", document=document, embedding_model="m")
        assert not is_current(s, source="help", document=document, embedding_model="other")
    path.write_text(CHECKIN.replace("3:30pm", "4:00pm"))
    changed = read_document(path)
    with any_store.session() as s:
        assert (
            store_document(s, source="help", document=changed, embedding_model="m", embeddings=_vectors(3))
            == "replaced"
        )
        passages = load_passages(s, embedding_model="m")
        assert [p.text for p in passages][1] == "Check-in time is from 4:00pm - 9:00pm."
        assert len(s.exec(select(KnowledgeChunk)).all()) == 3  # the old passages are gone, not added to
        assert load_passages(s, embedding_model="other") == []
        assert [(r.source, r.documents, r.chunks) for r in list_sources(s)] == [("help", 1, 3)]
        assert fingerprint(s) != stamp
        assert remove_source(s, source="help") == 1 and remove_source(s, source="help") == 0
        assert list_sources(s) == [] and s.exec(select(KnowledgeChunk)).all() == []


def test_a_document_with_the_wrong_number_of_embeddings_writes_nothing(store, tmp_path):
    document = read_document(_write(tmp_path, "a.md", CHECKIN))
    with store.session() as s:
        with pytest.raises(ValueError, match="2 embeddings for 3 passages"):
            store_document(s, source="help", document=document, embedding_model="m", embeddings=_vectors(2))
        assert list_sources(s) == []
