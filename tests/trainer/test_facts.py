"""The fact score the gate and bench/learn.py use: numbers, content words and yes/no polarity."""

import pytest

from trainer.facts import fact_score, facts, mean_fact_score


def test_key_facts_are_numbers_content_words_and_polarity():
    found = facts("Check-in is from 3:30pm to 9:00pm, and parking costs ten pounds.")
    assert found.numbers == {"3:30", "9:00", "10"}
    assert {"check", "parking", "cost", "pound"} <= found.words and "from" not in found.words
    assert not found.negative and facts("No, pets aren't allowed.").negative


def test_a_correct_answer_scores_one_and_a_contradiction_loses_polarity():
    reference = "Yes, free WiFi is available in all rooms."
    assert fact_score("Yes! Free WiFi is available in all rooms.", reference) == 1.0
    agrees = fact_score("Yes, WiFi is available in the rooms.", reference)
    contradicts = fact_score("No, WiFi is not available in the rooms.", reference)
    assert contradicts < agrees < 1.0 and agrees - contradicts == pytest.approx(1 / 5)  # 4 words + polarity


def test_wrong_numbers_score_lower_than_right_ones():
    reference = "Check-in is from 3:30pm to 9:00pm."
    assert fact_score("Check-in is from 3:30pm to 9:00pm.", reference) == 1.0
    assert fact_score("Check-in is from 2:00pm to 10:00pm.", reference) < 0.7
    assert fact_score("", reference) == 0.0


def test_mean_needs_one_answer_per_reference():
    assert mean_fact_score(["Yes, it is free."], ["Yes, it is free."]) == 1.0
    assert mean_fact_score([], []) == 0.0
