"""GA / PA / FGA / FTA on hand-computed toy examples."""
import pytest

from logparse.metrics import evaluate, group_counts

# Seven logs, four ground-truth templates A (x3), B (x2), C, D.
TRUE = ["A", "A", "A", "B", "B", "C", "D"]
PRED = ["A", "A  ", " A", "P", "P", "C", "C"]
# Predicted groups after whitespace normalisation: A = {0,1,2}, P = {3,4}, C = {5,6}.
#   A: truths {A: 3}, |A| = 3 -> correct group, string A == A -> correct template.
#   P: truths {B: 2}, |B| = 2 -> correct group, string P != B -> not a correct template.
#   C: truths {C: 1, D: 1}  -> mixed, incorrect.
# GA  = (3 + 2) / 7 = 5/7
# PA  = logs 0, 1, 2 (A) and 5 (C) match -> 4/7
# FGA: PGA = 2/3 (2 correct of 3 predicted groups), RGA = 2/4; F1 = 2*(1/3)/(7/6) = 4/7
# FTA: PTA = 1/3, RTA = 1/4; F1 = 2*(1/12)/(7/12) = 2/7


def test_toy_example_hand_computed():
    scores = evaluate(PRED, TRUE)
    assert scores == pytest.approx({"GA": 5 / 7, "PA": 4 / 7, "FGA": 4 / 7, "FTA": 2 / 7})
    counts = group_counts(PRED, TRUE)
    assert (counts.n_pred_groups, counts.n_true_groups) == (3, 4)
    assert (counts.correct_groups, counts.logs_in_correct_groups, counts.correct_templates) == (2, 5, 1)


def test_split_group_is_not_correct_even_with_right_strings():
    # True [T, T, U]; predicted [T, V, U]. Group T = {0} but |T| = 2 -> incorrect; V = {1} -> incorrect;
    # U = {2} -> correct group and template. GA = 1/3, PA = 2/3 (logs 0 and 2),
    # PGA = 1/3, RGA = 1/2 -> FGA = 2*(1/6)/(5/6) = 2/5; PTA, RTA the same -> FTA = 2/5.
    scores = evaluate(["T", "V", "U"], ["T", "T", "U"])
    assert scores == pytest.approx({"GA": 1 / 3, "PA": 2 / 3, "FGA": 2 / 5, "FTA": 2 / 5})


def test_perfect_and_all_wrong():
    truth = ["a <*>", "a <*>", "b"]
    assert evaluate(truth, truth) == pytest.approx({"GA": 1.0, "PA": 1.0, "FGA": 1.0, "FTA": 1.0})
    # Everything in one predicted group: no group correct, nothing parsed right.
    assert evaluate(["x", "x", "x"], truth) == pytest.approx({"GA": 0.0, "PA": 0.0, "FGA": 0.0, "FTA": 0.0})


def test_rejects_bad_lengths():
    with pytest.raises(ValueError, match="pred_templates"):
        evaluate(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="true_templates"):
        evaluate([], [])
