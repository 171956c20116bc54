"""The Evaluator end to end on generated batches: metrics per set kind, label spaces, reports."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from dmenet.errors import OutputExistsError
from dmenet.evaluation import metrics as M
from dmenet.evaluation.evaluator import Evaluator, evaluate_estimator
from dmenet.labels import from_sigma_px


def _cuhk_batch(name: str, seed: int, size=(12, 10)):
    gen = torch.Generator().manual_seed(seed)
    sharp = (torch.rand(1, 1, *size, generator=gen) > 0.5).float()
    return {
        "image": torch.rand(1, 3, *size, generator=gen),
        "name": [name],
        "set": ["cuhk"],
        "sharp_mask": sharp,
    }


def _good_prediction(batch, seed: int):
    """A prediction correlated with the blur mask (blurred = 1 - sharp)."""
    gen = torch.Generator().manual_seed(100 + seed)
    blurred = 1.0 - batch["sharp_mask"]
    return (0.6 * blurred + 0.5 * torch.rand(blurred.shape, generator=gen)).clamp(0, 1)


class TestCUHKSet:
    def test_metrics_match_the_metric_functions(self, tmp_path):
        evaluator = Evaluator("cuhk", out_dir=tmp_path / "cuhk")
        batches = [_cuhk_batch(f"img{i}", i) for i in range(3)]
        preds = [_good_prediction(b, i) for i, b in enumerate(batches)]
        per_image = [evaluator.update(p, b) for p, b in zip(preds, batches)]
        assert set(per_image[0]) == {"accuracy", "f_measure", "ap"}
        blurred = [b["sharp_mask"][0, 0] < 0.5 for b in batches]
        accuracies = [M.cuhk_accuracy(p[0, 0], m) for p, m in zip(preds, blurred)]
        assert [r["accuracy"] for r in per_image] == pytest.approx(accuracies)
        pooled = M.BlurDetectionPR()
        for p, m in zip(preds, blurred):
            pooled.update(p[0, 0], m)
        metrics = evaluator.compute()
        assert list(metrics) == ["accuracy", "ap", "f_measure"]
        assert metrics["accuracy"] == pytest.approx(np.mean(accuracies))
        assert metrics["ap"] == pytest.approx(pooled.compute()["ap"])
        assert 0.5 < metrics["accuracy"] <= 1.0  # the prediction is informative

    def test_sharp_mask_polarity(self):
        # a prediction that is exactly the blur mask scores 1; its inverse scores 0
        batch = _cuhk_batch("a", 0)
        blurred = 1.0 - batch["sharp_mask"]
        assert Evaluator("cuhk", overwrite=True).update(blurred, batch)["accuracy"] == 1.0
        assert Evaluator("cuhk", overwrite=True).update(1 - blurred, batch)["accuracy"] == 0.0

    def test_released_label_space_is_converted_before_scoring(self):
        batch = _cuhk_batch("a", 1)
        y_ours = _good_prediction(batch, 1)
        sigma = y_ours * 7.0
        y_released = from_sigma_px(sigma, "released")  # what the public checkpoint would output
        ours = Evaluator("cuhk", overwrite=True).update(y_ours, batch)
        released = Evaluator("cuhk", label_space="released", overwrite=True).update(y_released, batch)
        assert released == pytest.approx(ours)
        # read as "ours", the released output is shifted and scaled: same ranking, so only a
        # dense metric would reveal the mix-up; check the conversion with a labelled set below

    def test_unknown_label_space(self):
        from dmenet.errors import ConfigError

        with pytest.raises(ConfigError, match="label space 'tf'.*'ours'.*'released'.*'generator'"):
            Evaluator("cuhk", label_space="tf", overwrite=True)


def test_metric_names_follow_what_a_set_carries():
    from dmenet.evaluation.evaluator import metric_names

    image = torch.rand(3, 4, 6)
    label = torch.rand(1, 4, 6)
    mask = (label > 0.5).float()
    px = {"mse_px", "mae_px"}  # the errors in px beside those in y
    dense = {"mse", "mae", *px, "accuracy", "f_measure", "ap"}  # a dense label also gives a mask
    assert set(metric_names("syndof", {"image": image, "label": label, "set": "syndof"})) == dense
    assert set(metric_names("cuhk", {"image": image, "sharp_mask": mask})) == {"accuracy", "f_measure", "ap"}
    assert set(metric_names("rtf", {"image": image, "sigma_px": 7 * label})) == {"mse", "mae", *px}
    assert metric_names("photos", {"image": image, "name": "a"}) == []


class TestDenseSets:
    def test_syndof_mse_mae_and_derived_mask(self):
        label = torch.tensor([[[[0.0, 0.5], [1.0, 0.02]]]])  # sigma 0, 3.5, 7, 0.14 px
        pred = torch.tensor([[[[0.1, 0.5], [0.8, 0.0]]]])
        batch = {"image": torch.rand(1, 3, 2, 2), "name": ["s"], "set": ["syndof"], "label": label}
        out = Evaluator("syndof", overwrite=True).update(pred, batch)
        assert out["mse"] == pytest.approx((0.01 + 0.0 + 0.04 + 0.0004) / 4)
        assert out["mae"] == pytest.approx((0.1 + 0.0 + 0.2 + 0.02) / 4)
        # the same errors in px: sigma errors 0.7, 0, 1.4, 0.14 px
        assert out["mae_px"] == pytest.approx((0.7 + 0.0 + 1.4 + 0.14) / 4)
        assert out["mse_px"] == pytest.approx((0.49 + 0.0 + 1.96 + 0.0196) / 4)
        # derived mask: blurred where sigma > 0.25 px -> [[F, T], [T, F]];
        # tau = 0.3 * 0.8 = 0.24 -> predicted [[F, T], [T, F]]
        assert out["accuracy"] == 1.0

    def test_released_space_dense_errors_use_sigma(self):
        sigma = torch.tensor([[[[0.0, 2.0], [3.5, 7.0]]]])
        label = from_sigma_px(sigma, "ours")
        batch = {"image": torch.rand(1, 3, 2, 2), "name": ["s"], "label": label}
        evaluator = Evaluator("syndof", label_space="released", overwrite=True)
        out = evaluator.update(from_sigma_px(sigma, "released"), batch)
        assert out["mse"] == pytest.approx(0.0, abs=1e-12)
        wrong = Evaluator("syndof", overwrite=True).update(from_sigma_px(sigma, "released"), batch)
        assert wrong["mse"] > 1e-3

    def test_rtf_rules_apply_by_set_name(self):
        sigma_gt = torch.tensor([[[[0.3, 3.275, 1.65]]]])
        sigma_pred_ours_y = torch.tensor([[[[0.0, 1.0, 1.65 / 7.0]]]])  # sigma 0, 7 (clipped), 1.65
        batch = {"image": torch.rand(1, 3, 1, 3), "name": ["r"], "sigma_px": sigma_gt,
                 "label": from_sigma_px(sigma_gt, "ours")}
        out = Evaluator("rtf_noise0", overwrite=True).update(sigma_pred_ours_y, batch)
        assert set(out) == {"mse", "mae", "mse_px", "mae_px"}
        assert out["mae_px"] == pytest.approx(0.3 / 3, rel=1e-5)  # px: |0 - 0.3|, then 0, 0
        mse, mae = M.rtf_errors(torch.tensor([[0.0, 7.0, 1.65]]), torch.tensor([[0.3, 3.275, 1.65]]))
        assert (out["mse"], out["mae"]) == pytest.approx((mse, mae))
        assert out["mae"] == pytest.approx((0.3 / 3.275) / 3, rel=1e-5)

    def test_rtf_without_ground_truth_is_an_error(self):
        batch = {"image": torch.rand(1, 3, 2, 2), "name": ["r"]}
        with pytest.raises(ValueError, match="sigma_px"):
            Evaluator("rtf", overwrite=True).update(torch.zeros(1, 1, 2, 2), batch)

    def test_unlabelled_set_has_no_metrics(self, tmp_path):
        evaluator = Evaluator("flickr", out_dir=tmp_path / "f")
        assert evaluator.update(torch.rand(1, 1, 4, 4), {"image": torch.rand(1, 3, 4, 4), "name": ["x"]}) == {}
        assert evaluator.compute() == {}
        files = evaluator.write()["files"]
        assert "pr_curve.png" not in files and (tmp_path / "f" / "metrics.json").is_file()

    def test_bad_prediction_shape(self):
        with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
            Evaluator("x", overwrite=True).update(torch.zeros(3, 4, 4), {"name": ["a"]})

    def test_batch_of_two_returns_the_mean(self):
        label = torch.stack([torch.zeros(1, 3, 3), torch.ones(1, 3, 3)])
        batch = {"image": torch.rand(2, 3, 3, 3), "name": ["a", "b"], "label": label}
        evaluator = Evaluator("syn", overwrite=True)
        out = evaluator.update(torch.full((2, 1, 3, 3), 0.5), batch)
        assert out["mse"] == pytest.approx(0.25)
        assert [r["name"] for r in evaluator.records] == ["a", "b"]


class FakeLogger:
    def __init__(self):
        self.metrics, self.tables, self.images = {}, [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)


class WandbLogger(FakeLogger):  # matched by class name, like lightning's WandbLogger
    def log_table(self, key, columns, data):
        self.tables.append((key, columns, data))

    def log_image(self, key, images):
        self.images.append((key, images))


class TestReport:
    def _filled(self, out_dir, **kwargs):
        evaluator = Evaluator("cuhk", out_dir=out_dir, **kwargs)
        for i in range(3):
            batch = _cuhk_batch(f"img{i}", i)
            evaluator.update(_good_prediction(batch, i), batch)
        return evaluator

    def test_write_all_files_and_log(self, tmp_path):
        out_dir = tmp_path / "results" / "cuhk"
        evaluator = self._filled(out_dir)
        logger = WandbLogger()
        summary = evaluator.write(logger=logger)
        for name in ("metrics.json", "table.md", "per_image.csv", "pr_curve.png", "pr_curve.csv"):
            assert (out_dir / name).is_file(), name
        data = json.loads((out_dir / "metrics.json").read_text())
        assert data["set"] == "cuhk" and data["images"] == 3
        assert data["metrics"] == pytest.approx(evaluator.compute())
        table = (out_dir / "table.md").read_text()
        assert "| set | images | accuracy | AP | F-measure |" in table
        assert f"{data['metrics']['accuracy']:.4f}" in table
        with open(out_dir / "per_image.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["name"] for r in rows] == ["img0", "img1", "img2"]
        assert float(rows[1]["accuracy"]) == pytest.approx(evaluator.records[1]["accuracy"])
        assert (out_dir / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with open(out_dir / "pr_curve.csv") as handle:
            assert len(list(csv.DictReader(handle))) == 102  # 101 thresholds + the end point
        assert logger.metrics["test/cuhk/accuracy"] == pytest.approx(data["metrics"]["accuracy"])
        assert logger.tables[0][1] == ["name", "accuracy", "ap", "f_measure"]
        assert logger.images[0][1] == [str(out_dir / "pr_curve.png")]
        assert summary["files"]["table.md"] == str(out_dir / "table.md")

    def test_plain_logger_gets_metrics_only(self, tmp_path):
        logger = FakeLogger()
        self._filled(tmp_path / "c").write(logger=logger)
        assert set(logger.metrics) == {"test/cuhk/accuracy", "test/cuhk/ap", "test/cuhk/f_measure"}

    def test_refuses_to_overwrite_a_report(self, tmp_path):
        self._filled(tmp_path / "c").write()
        with pytest.raises(OutputExistsError, match="metrics.json"):
            Evaluator("cuhk", out_dir=tmp_path / "c")
        again = self._filled(tmp_path / "c", overwrite=True)
        assert again.write()["images"] == 3


def test_evaluate_estimator_on_dataset_items(tmp_path):
    items = []
    for i in range(2):
        batch = _cuhk_batch(f"img{i}", i)
        items.append({"image": batch["image"][0], "name": f"img{i}", "set": "cuhk",
                      "sharp_mask": batch["sharp_mask"][0]})

    def oracle(image):  # a perfect estimator that looks the answer up
        return next(1.0 - it["sharp_mask"][None] for it in items if torch.equal(it["image"], image[0]))

    summary, evaluator = evaluate_estimator(oracle, items, "cuhk", out_dir=tmp_path / "o", progress=False)
    assert summary["accuracy"] == 1.0 and summary["ap"] == pytest.approx(1.0)
    assert (tmp_path / "o" / "pr_curve.png").is_file()
    summary, _ = evaluate_estimator(oracle, items, "cuhk", progress=False)
    assert summary["images"] == 2 and "files" not in summary
