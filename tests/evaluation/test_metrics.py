"""Each metric against hand-computed values; PR / AP against a brute-force computation."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from dmenet.evaluation import metrics as M


class TestCUHKAccuracy:
    def test_threshold_is_03_max_plus_07_min(self):
        y = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
        assert M.cuhk_threshold(y) == pytest.approx(0.3 * 0.9 + 0.7 * 0.1)

    def test_hand_computed_accuracy(self):
        # tau = 0.3 * 1 + 0.7 * 0 = 0.3 -> blurred where y > 0.3: [[F, T], [F, T]]
        y = torch.tensor([[0.0, 1.0], [0.2, 0.5]])
        mask = torch.tensor([[0, 1], [1, 1]])
        assert M.cuhk_blurred(y).tolist() == [[False, True], [False, True]]
        assert M.cuhk_accuracy(y, mask) == pytest.approx(3 / 4)

    def test_threshold_is_relative(self):
        y = torch.tensor([[0.0, 1.0], [0.2, 0.5]])
        mask = torch.tensor([[0, 1], [1, 1]])
        assert M.cuhk_accuracy(5 * y + 2, mask) == pytest.approx(M.cuhk_accuracy(y, mask))

    def test_size_mismatch_is_an_error(self):
        with pytest.raises(ValueError, match="differ"):
            M.cuhk_accuracy(torch.rand(4, 4), torch.ones(4, 5))


class TestFMeasure:
    def test_hand_computed(self):
        pred = torch.tensor([True, True, True, False])
        mask = torch.tensor([True, False, False, False])
        p, r = 1 / 3, 1.0
        expected = 1.3 * p * r / (0.3 * p + r)
        assert M.f_measure(pred, mask) == pytest.approx(expected)
        assert M.f_measure(pred, mask, beta2=1.0) == pytest.approx(2 * p * r / (p + r))

    def test_nothing_predicted_is_zero(self):
        assert M.f_measure(torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)) == 0.0


class TestDenseErrors:
    def test_hand_computed(self):
        pred = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
        true = torch.tensor([[[[0.5, 0.5], [0.0, 0.25]]]])
        mse, mae = M.dense_errors(pred, true)
        assert mse == pytest.approx((0.25 + 1.0) / 4)
        assert mae == pytest.approx((0.5 + 1.0) / 4)

    def test_size_mismatch_is_an_error(self):
        with pytest.raises(ValueError, match="differ in size"):
            M.dense_errors(torch.zeros(3, 3), torch.zeros(3, 4))


class TestRTF:
    def test_table_is_the_shipped_23_pairs(self):
        disc, sigma = M.rtf_table()
        assert len(disc) == 23
        assert disc[0] == 0.5 and sigma[0] == pytest.approx(0.3)
        assert disc[-1] == 6.0 and sigma[-1] == pytest.approx(3.275)
        assert np.all(np.diff(sigma) > 0)
        assert M.rtf_sigma_max_px() == pytest.approx(3.275)

    def test_packaged_copy_equals_shared_table(self, shared_data):
        with open(shared_data / "rtf_disc_to_gauss.csv") as handle:
            rows = list(csv.DictReader(handle))
        disc, sigma = M.rtf_table()
        assert [float(r["disc_blur"]) for r in rows] == pytest.approx(list(disc))
        assert [float(r["gaussian_sigma"]) for r in rows] == pytest.approx(list(sigma))

    def test_nearest_lookup_hand_values(self):
        radius = np.array([0.0, 0.5, 0.62, 0.63, 1.0, 2.1, 5.99, 6.0, 9.0])
        expected = [0.3, 0.3, 0.3, 0.5, 0.65, 1.125, 3.275, 3.275, 3.275]
        assert M.rtf_disc_to_gauss(radius) == pytest.approx(expected)
        as_tensor = M.rtf_disc_to_gauss(torch.tensor(radius, dtype=torch.float64))
        assert isinstance(as_tensor, torch.Tensor)
        assert as_tensor.tolist() == pytest.approx(expected)

    def test_lookup_keeps_shape(self):
        assert M.rtf_disc_to_gauss(np.ones((2, 3, 4))).shape == (2, 3, 4)

    def test_errors_clip_normalise_and_crop(self):
        top = 3.275
        pred = torch.tensor([[0.0, top, 2 * top], [top / 2, -1.0, top]])  # 2 x 3
        gt = torch.tensor([[0.0, top], [top, 0.0], [9.0, 9.0]])  # 3 x 2
        # common top-left 2 x 2; pred clipped to [0, 3.275]: [[0, 1], [0.5, 0]] after / 3.275
        mse, mae = M.rtf_errors(pred, gt)
        assert mse == pytest.approx(0.25 / 4)
        assert mae == pytest.approx(0.5 / 4)

    def test_crop_to_common(self):
        a, b = M.crop_to_common(torch.zeros(1, 1, 5, 7), torch.zeros(1, 1, 6, 4))
        assert a.shape == b.shape == (1, 1, 5, 4)


def _brute_force_pr(images, thresholds):
    """Loop over thresholds and pixels with plain Python: pooled precision/recall and AP."""
    pixels = []
    for y, mask in images:
        lo, hi = float(y.min()), float(y.max())
        for value, positive in zip(y.flatten().tolist(), mask.flatten().tolist()):
            score = (value - lo) / (hi - lo) if hi > lo else 0.0
            pixels.append((score, bool(positive)))
    precision, recall = [], []
    for t in thresholds:
        tp = sum(1 for s, pos in pixels if s >= t and pos)
        fp = sum(1 for s, pos in pixels if s >= t and not pos)
        fn = sum(1 for s, pos in pixels if s < t and pos)
        precision.append(tp / (tp + fp) if tp + fp else float("nan"))
        recall.append(tp / (tp + fn) if tp + fn else float("nan"))
    recall_next = recall[1:] + [0.0]
    ap = 0.0
    for p, r, r_next in zip(precision, recall, recall_next):
        ap += (r - r_next) * (0.0 if math.isnan(p) else p)
    return precision, recall, ap


class TestPrecisionRecall:
    def _images(self, n=3, seed=0):
        gen = torch.Generator().manual_seed(seed)
        images = []
        for i in range(n):
            mask = torch.rand(1, 1, 6, 5, generator=gen) > 0.4
            # informative but noisy scores, different ranges per image
            y = (mask.float() * 0.5 + torch.rand(1, 1, 6, 5, generator=gen)) * (i + 1) - i
            images.append((y, mask))
        return images

    def test_pooled_curve_and_ap_match_brute_force(self):
        images = self._images()
        pr = M.BlurDetectionPR(num_thresholds=11)
        for y, mask in images:
            pr.update(y, mask)
        out = pr.compute()
        thresholds = [round(0.1 * k, 10) for k in range(11)]
        precision, recall, ap = _brute_force_pr(images, out["thresholds"].tolist())
        assert out["thresholds"].tolist() == pytest.approx(thresholds)
        np.testing.assert_allclose(out["precision"][:-1], precision, rtol=1e-6)
        np.testing.assert_allclose(out["recall"][:-1], recall, rtol=1e-6)
        assert (out["precision"][-1], out["recall"][-1]) == (1.0, 0.0)
        assert out["ap"] == pytest.approx(ap, rel=1e-6)

    def test_single_image_ap_matches_brute_force(self):
        y, mask = self._images(1, seed=3)[0]
        pr = M.BlurDetectionPR(num_thresholds=21)
        _, _, ap = _brute_force_pr([(y, mask)], pr.thresholds.tolist())
        assert pr.image_ap(y, mask) == pytest.approx(ap, rel=1e-6)
        assert pr.count == 0  # image_ap leaves the pooled state alone

    def test_perfect_ranking_has_ap_one_and_reverse_less(self):
        y = torch.tensor([0.0, 0.5, 1.0])
        mask = torch.tensor([0, 1, 1])
        pr = M.BlurDetectionPR()
        assert pr.image_ap(y, mask) == pytest.approx(1.0)
        assert pr.image_ap(1 - y, mask) < 0.7

    def test_values_outside_unit_range_get_no_sigmoid(self):
        # torchmetrics would squash these with a sigmoid; the min-max score must not change
        y, mask = self._images(1, seed=5)[0]
        pr = M.BlurDetectionPR()
        assert pr.image_ap(40 * y - 25, mask) == pytest.approx(pr.image_ap(y, mask), rel=1e-6)

    def test_accuracy_threshold_is_a_point_of_the_curve(self):
        y, mask = self._images(1, seed=7)[0]
        pr = M.BlurDetectionPR(num_thresholds=101)
        pr.update(y, mask)
        out = pr.compute()
        i = int(np.argmin(np.abs(out["thresholds"] - 0.3)))
        pred = M.cuhk_blurred(y)
        tp = float((pred & mask).sum())
        assert out["precision"][i] == pytest.approx(tp / float(pred.sum()))
        assert out["recall"][i] == pytest.approx(tp / float(mask.sum()))

    def test_constant_map_scores_zero(self):
        assert torch.equal(M.blur_scores(torch.full((3, 3), 0.7)), torch.zeros(3, 3))

    def test_compute_before_update_is_an_error(self):
        with pytest.raises(RuntimeError):
            M.BlurDetectionPR().compute()
