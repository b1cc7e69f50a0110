"""Retrieval on a real store with the deterministic test embedder: the correction memory uses approved
corrections only, at once; knowledge-base passages above the threshold, best first, within the budget;
nothing is embedded (nor a model loaded) while there is nothing to search."""

from __future__ import annotations

import numpy as np

from bot.runtime.retrieval import Retrieval, Retriever, faq_answer, names, top
from feedback.knowledge import StoredPassage
from tests.support.fakes import HashEmbedder
from tests.support.grounding import add_page, answered, correct

PAGE = """# A and B Guest House

## Check-in

Check-in time at A and B Guest House is from 3:30pm to 9:00pm.

## Pets

Pets are not allowed at A and B Guest House.
"""


def test_top_orders_by_similarity_and_handles_empty_matrices():
    matrix = np.eye(3, dtype=np.float32)
    assert top(matrix, np.array([0.1, 0.9, 0.3], dtype=np.float32), 2) == [
        (1, 0.8999999761581421),
        (2, 0.30000001192092896),
    ]
    assert top(np.zeros((0, 0), np.float32), np.ones(3, np.float32), 3) == []


def test_nothing_is_embedded_while_the_store_has_nothing_to_search(store):
    embedder = HashEmbedder()
    retrieval = Retriever(store, embedder).retrieve("When is check-in?")
    assert retrieval.passages == [] and retrieval.kb_size == 0 and embedder.calls == 0


def test_warming_up_loads_the_embedder_even_while_the_store_has_nothing_to_search(store):
    """The server warms its retriever at start-up: the embedding model is loaded then, not when the first
    correction is approved, while customers wait (they did, 4.4 s, under the crash test's load)."""
    embedder = HashEmbedder()
    Retriever(store, embedder).warm()
    assert embedder.calls == 1
    assert Retriever(store, embedder, kb=True, memory=False).retrieve("When is check-in?").passages == []
    assert embedder.calls == 1  # a question still costs no embedding while there is nothing to search


def test_kb_passages_above_the_threshold_best_first(any_store, tmp_path):
    embedder = HashEmbedder()
    add_page(any_store, embedder, tmp_path, "a-and-b.md", PAGE, url="https://help.example.com/a-and-b")
    retriever = Retriever(any_store, embedder, kb_min_score=0.3)
    retrieval = retriever.retrieve("What time is check-in at A and B Guest House?")
    assert retrieval.kb_size == 2
    assert [h.title for h in retrieval.passages][0] == "A and B Guest House › Check-in"
    assert retrieval.passages[0].url == "https://help.example.com/a-and-b" and retrieval.passages[0].kind == "kb"
    assert Retriever(any_store, embedder, kb_min_score=0.99).retrieve("Do you sell gift cards?").passages == []


def test_the_budget_keeps_the_best_passages_only(store, tmp_path):
    embedder = HashEmbedder()
    add_page(store, embedder, tmp_path, "a-and-b.md", PAGE)
    hits = Retriever(store, embedder, kb_min_score=0.0, max_chars=80).retrieve("check-in pets A and B").passages
    assert len(hits) == 1  # the second passage would pass 80 characters


def test_only_approved_corrections_are_remembered_and_at_once(any_store):
    embedder = HashEmbedder()
    retriever = Retriever(any_store, embedder, memory_min_score=0.6)
    question = "Can I bring my dog to the Lensfield Hotel?"
    draft = answered(any_store, question)
    correct(any_store, draft, "Dogs are welcome for a fee.", approve=False)
    rejected = answered(any_store, question)
    correct(any_store, rejected, "Never.", approve=False, reject=True)
    assert retriever.retrieve(question).passages == []  # drafts and rejected corrections are never used
    approved = answered(any_store, question)
    correction_id = correct(any_store, approved, "No, the Lensfield Hotel does not allow pets.")
    hits = retriever.retrieve("can I bring my dog to the lensfield hotel").passages
    assert [(h.kind, h.correction_id) for h in hits] == [("correction", correction_id)]
    assert hits[0].text.endswith("No, the Lensfield Hotel does not allow pets.")
    assert retriever.retrieve("What is the wifi password at the Gonville Hotel?").passages == []  # unrelated


def test_memory_comes_first_and_kb_off_or_memory_off_leave_them_out(store, tmp_path):
    embedder = HashEmbedder()
    add_page(store, embedder, tmp_path, "a-and-b.md", PAGE)
    correct(store, answered(store, "What time is check-in at A and B Guest House?"), "From 3:30pm.")
    question = "What time is check-in at A and B Guest House?"
    both = Retriever(store, embedder, kb_min_score=0.3).retrieve(question).passages
    assert [h.kind for h in both][:2] == ["correction", "kb"]
    assert {h.kind for h in Retriever(store, embedder, memory=False, kb_min_score=0.3).retrieve(question).passages} == {
        "kb"
    }
    assert {h.kind for h in Retriever(store, embedder, kb=False).retrieve(question).passages} == {"correction"}
    assert Retriever(store, embedder, kb=False, memory=False).retrieve(question).passages == []


def test_only_passages_that_answer_one_question_have_an_answer_to_quote():
    def passage(title: str, text: str) -> StoredPassage:
        return StoredPassage(1, title, "", text, b"")

    assert faq_answer(passage("Can I park?", "Can I park?\nYes, for free.")) == "Yes, for free."  # an FAQ row
    assert faq_answer(passage("Hotel › Can I park?", "Yes, for free.")) == "Yes, for free."  # a question heading
    assert faq_answer(passage("Hotel › Parking", "Yes, for free.")) == ""  # a section: the model answers
    assert faq_answer(passage("Hotel", "Is parking free? It is.")) == ""


def test_names_are_capitalised_words_that_do_not_start_a_sentence():
    assert names("Is there parking at Kirkwood House?") == {"kirkwood", "house"}
    assert names("Hi. Can I park at Ashley Hotel? Thanks!") == {"ashley", "hotel"}  # "Can", "Thanks" start sentences
    assert names("Is BYOB ok at Frankie And Benny's?") == {"byob", "frankie", "and", "benny"}
    assert names("can i park at the ashley hotel") == frozenset()  # typed in lower case: nothing to check


def test_a_passage_about_another_place_does_not_answer_a_question_naming_this_one(store, tmp_path):
    embedder = HashEmbedder()
    add_page(store, embedder, tmp_path, "ashley.md", "# Ashley Hotel\n\n## Parking\n\nFree parking behind the hotel.\n")
    strict = Retriever(store, embedder, kb_min_score=0.1, memory=False)
    assert strict.retrieve("Is there parking at Ashley Hotel?").passages[0].title == "Ashley Hotel › Parking"
    assert strict.retrieve("Is there parking at Kirkwood House?").passages == []  # another hotel: nothing
    loose = Retriever(store, embedder, kb_min_score=0.1, memory=False, match_names=False)
    assert loose.retrieve("Is there parking at Kirkwood House?").passages[0].title == "Ashley Hotel › Parking"


def test_a_correction_about_another_place_is_not_used(store):
    correct(store, answered(store, "Is parking free at Ashley Hotel?"), "Yes, parking is free at Ashley Hotel.")
    retriever = Retriever(store, HashEmbedder(), memory_min_score=0.3, kb=False)
    assert retriever.retrieve("is parking free at ashley hotel").passages[0].kind == "correction"
    assert retriever.retrieve("Is parking free at Kirkwood House?").passages == []


def test_retrieve_many_answers_each_question_with_one_embedding_call(store, tmp_path):
    embedder = HashEmbedder()
    add_page(store, embedder, tmp_path, "guest.md", PAGE)
    retriever = Retriever(store, embedder, kb_min_score=0.2, memory=False)
    calls = embedder.calls
    found = retriever.retrieve_many(
        ["When is check-in at A and B Guest House?", "Are pets allowed at A and B Guest House?"]
    )
    assert [r.passages[0].title for r in found] == ["A and B Guest House › Check-in", "A and B Guest House › Pets"]
    assert embedder.calls == calls + 1


def test_a_question_asked_again_is_not_embedded_again_and_the_cache_is_bounded(store, tmp_path):
    embedder = HashEmbedder()
    add_page(store, embedder, tmp_path, "guest.md", PAGE)
    retriever = Retriever(store, embedder, kb_min_score=0.2, memory=False, query_cache=2)
    question = "Are pets allowed at A and B Guest House?"
    first = retriever.retrieve(question)
    calls = embedder.calls
    assert retriever.retrieve_many([question, question]) == [first, first] and embedder.calls == calls
    retriever.retrieve_many(["When is check-in?", "Is there parking?", "Do you have wifi?"])  # one call: 3 new
    assert embedder.calls == calls + 1 and list(retriever._queries) == ["Is there parking?", "Do you have wifi?"]
    retriever.retrieve(question)  # pushed out, so embedded again
    assert embedder.calls == calls + 2


def test_explain_shows_the_closest_passages_and_what_retrieve_gives_with_one_embedding(store, tmp_path):
    embedder = HashEmbedder()
    add_page(store, embedder, tmp_path, "guest.md", PAGE)
    calls = embedder.calls
    hits, retrieval = Retriever(store, embedder, kb_min_score=0.2, memory=False).explain("Are pets allowed?", 2)
    assert [h.title for h in hits][0] == "A and B Guest House › Pets" and len(hits) == 2
    assert retrieval.passages[0].title == "A and B Guest House › Pets" and embedder.calls == calls + 1
    hits, retrieval = Retriever(store, embedder, kb=False, memory=False).explain("Are pets allowed?", 2)
    assert len(hits) == 2 and retrieval == Retrieval()  # KB off: passages shown, none used, nothing to refuse on


def test_a_memory_is_keyed_by_the_customer_turn_just_before_the_corrected_answer(any_store):
    from feedback import repo
    from feedback.memory import approved_memories
    from feedback.models import Role

    with any_store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="")
        for role, text in [(Role.user, "Hi"), (Role.assistant, "Hello!"), (Role.user, "Is there parking?")]:
            repo.add_message(s, conversation_id=conversation.id, role=role, text=text)
        answer = repo.add_message(s, conversation_id=conversation.id, role=Role.assistant, text="No.").id
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text="Thanks, bye")
    correct(any_store, answer, "Yes, free parking behind the hotel.")
    correct(any_store, answered(any_store, "Do you take cards?"), "Visa and Mastercard.", approve=False)  # a draft
    with any_store.session() as s:
        memories = approved_memories(s)
    assert [(m.question, m.answer) for m in memories] == [("Is there parking?", "Yes, free parking behind the hotel.")]
