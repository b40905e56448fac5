"""dfk.metrics.binary's figures pinned to values worked out by hand, and EER as the field computes it."""

import math

import numpy as np
import pytest

from dfk.metrics.binary import (choose_threshold, compute_metrics, eer, expected_calibration_error, predicted,
                            threshold_at_fpr, verdict)

# Three reals, two fakes. On sklearn's ROC curve (collinear points dropped) the points are
#   threshold  inf   0.9   0.7   0.6   0.1
#   FPR        0     0     1/3   1/3   1
#   FNR        1     1/2   1/2   0     0
# |FNR - FPR| is smallest (1/6) at threshold 0.7, where FPR = 1/3 and FNR = 1/2.
Y = np.array([0, 0, 0, 1, 1])
P = np.array([0.1, 0.2, 0.7, 0.6, 0.9])


def deepfakebench_eer(y, p):
    """DeepfakeBench's training/metrics/utils.py get_test_metrics, its EER lines as they are."""
    from sklearn import metrics

    fpr, tpr, _ = metrics.roc_curve(y, p, pos_label=1)
    fnr = 1 - tpr
    return fpr[np.nanargmin(np.absolute((fnr - fpr)))]


def test_eer_is_the_false_positive_rate_where_the_error_rates_meet():
    rate, threshold = eer(Y, P)
    assert rate == pytest.approx(1 / 3) and threshold == pytest.approx(0.7)
    # Not the mean of the two rates there ((1/3 + 1/2) / 2), which reads 0.08 worse on this set.
    assert rate != pytest.approx(5 / 12)


@pytest.mark.parametrize("ties", [False, True])
def test_eer_matches_deepfakebench_on_random_prediction_sets(ties):
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(4, 60))
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        p = rng.random(n)
        if ties:
            p = np.round(p, 1)
        assert eer(y, p)[0] == pytest.approx(deepfakebench_eer(y, p), abs=1e-12)


def test_threshold_at_a_target_false_positive_rate():
    # The lowest threshold whose FPR stays at or below the target.
    assert threshold_at_fpr(Y, P, 0.34) == pytest.approx(0.6)  # FPR 1/3, every fake caught
    assert threshold_at_fpr(Y, P, 0.2) == pytest.approx(0.9)  # no real may be called fake
    assert choose_threshold(Y, P, target_fpr=0.34) == pytest.approx(0.6)
    assert choose_threshold(Y, P) == pytest.approx(0.7)  # 0: the EER point


def test_metrics_against_hand_computed_values():
    m = compute_metrics(Y, P, threshold=0.7)
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of the 6 fake-real pairs ordered right
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.49 + 0.16 + 0.01) / 5)
    # ECE, 10 bins: one prediction per bin, so the mean of |p - y|.
    assert m["ece"] == pytest.approx((0.1 + 0.2 + 0.7 + 0.4 + 0.1) / 5)
    assert expected_calibration_error(Y, P) == pytest.approx(0.3)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.3) + math.log(0.6)
                                            + math.log(0.9)) / 5)
    assert m["accuracy"] == pytest.approx(4 / 5)  # at 0.5: the real at 0.7 is the one mistake
    assert m["accuracy_at_threshold"] == pytest.approx(3 / 5)  # at 0.7 the fake at 0.6 is missed too
    assert m["eer"] == pytest.approx(1 / 3) and m["threshold"] == 0.7
    # Average precision, sum over thresholds of (R_n - R_n-1) * P_n, highest score first:
    #   0.9 (fake): P 1, R 1/2;  0.7 (real): P 1/2, R 1/2;  0.6 (fake): P 2/3, R 1
    # = 1/2 * 1 + 0 * 1/2 + 1/2 * 2/3 = 5/6.
    assert m["average_precision"] == pytest.approx(5 / 6)
    # At 1% FPR no real may be called fake (3 reals: FPR is 0 or >= 1/3); the fake at 0.9 alone clears
    # the 0.7 real, so half the fakes are caught.
    assert m["tpr_at_fpr_1pct"] == pytest.approx(1 / 2)
    # At 0.5: calls fake 0.6, 0.7, 0.9 -> TP 2, FP 1 (the real at 0.7), FN 0.
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((2 / 3, 1, 4 / 5))
    # At 0.7: calls fake 0.7, 0.9 -> TP 1, FP 1, FN 1 (the fake at 0.6).
    assert (m["precision_at_threshold"], m["recall_at_threshold"], m["f1_at_threshold"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))


def test_the_confusion_matrix_and_report_written_count_the_calls_at_the_threshold(tmp_path):
    import json

    from dfk.metrics.binary import evaluate_predictions, write_report

    write_report(evaluate_predictions(Y, P, threshold=0.7), tmp_path)
    cm = json.loads((tmp_path / "test_confusion_matrix.json").read_text())
    # Reals 0.1, 0.2 below 0.7 (TN 2), 0.7 at it (FP 1); fakes 0.9 (TP 1), 0.6 (FN 1).
    assert (cm["tn"], cm["fp"], cm["fn"], cm["tp"]) == (2, 1, 1, 1)
    assert cm["matrix"] == [[2, 1], [1, 1]] and cm["labels"] == ["real", "fake"] and cm["threshold"] == 0.7
    report = json.loads((tmp_path / "test_classification_report.json").read_text())
    assert (report["fake"]["precision"], report["fake"]["recall"], report["fake"]["support"]) == pytest.approx((1 / 2, 1 / 2, 2))
    assert (report["real"]["precision"], report["real"]["recall"], report["real"]["support"]) == pytest.approx((2 / 3, 2 / 3, 3))
    assert report["accuracy"] == pytest.approx(3 / 5)


def test_a_single_class_split_gives_nan_for_ranking_metrics_and_numbers_for_the_rest():
    y, p = np.zeros(4, int), np.array([0.1, 0.2, 0.6, 0.3])
    m = compute_metrics(y, p)
    assert all(math.isnan(m[k]) for k in ("roc_auc", "average_precision", "eer", "tpr_at_fpr_1pct"))
    assert m["accuracy"] == pytest.approx(3 / 4) and m["brier"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.09) / 4)
    assert choose_threshold(y, p) == 0.5


def test_the_verdict_rule_is_fake_at_or_above_the_threshold():
    assert list(predicted([0.49, 0.5, 0.51], 0.5)) == [0, 1, 1]
    assert verdict(0.5, 0.5) == "fake" and verdict(0.4999, 0.5) == "real"
    assert list(verdict(np.array([0.2, 0.8]), 0.5)) == ["real", "fake"]
