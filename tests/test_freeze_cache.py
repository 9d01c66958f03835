"""The frozen backbone runs once over the data, however many epochs the head trains."""

from __future__ import annotations

from transformers.models.bert import modeling_bert

from helpers import tiny_overrides
from transferkit import load_config, train


def backbone_rows(monkeypatch, tiny_bert, toy_csv, tmp_path, regime: str, epochs: int, head_epochs: int | None = None) -> int:
    """Rows that went through the BERT backbone during a whole run."""
    rows = []
    forward = modeling_bert.BertModel.forward

    def counting_forward(self, input_ids=None, *args, **kwargs):
        rows.append(len(input_ids))
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(modeling_bert.BertModel, "forward", counting_forward)
    extra = {"train.epochs": epochs, "staged.head_epochs": head_epochs or epochs}
    run = train(load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / f"{regime}{epochs}-{head_epochs}", regime, **extra)))
    monkeypatch.setattr(modeling_bert.BertModel, "forward", forward)
    return sum(rows), sum(run.metrics["data"][n] for n in ("train", "validation", "test"))


def test_freeze_runs_the_backbone_once_whatever_the_epochs(monkeypatch, tiny_bert, toy_csv, tmp_path):
    rows_1, data_rows = backbone_rows(monkeypatch, tiny_bert, toy_csv, tmp_path, "freeze", 1)
    rows_10, _ = backbone_rows(monkeypatch, tiny_bert, toy_csv, tmp_path, "freeze", 10)
    assert rows_1 == rows_10 == data_rows  # train + validation + test, once each


def test_staged_head_stage_reuses_the_cache(monkeypatch, tiny_bert, toy_csv, tmp_path):
    rows_1, _ = backbone_rows(monkeypatch, tiny_bert, toy_csv, tmp_path, "staged", 1)
    rows_3, _ = backbone_rows(monkeypatch, tiny_bert, toy_csv, tmp_path, "staged", 3)
    # Head epochs add nothing; only the epochs of the second (all-layer) stage run the backbone.
    assert rows_3 > rows_1


def test_staged_head_epochs_cost_no_backbone_pass(monkeypatch, tiny_bert, toy_csv, tmp_path):
    """The head stage trains on the cache: ten head epochs run the backbone exactly as often as one."""
    one, data_rows = backbone_rows(monkeypatch, tiny_bert, toy_csv, tmp_path, "staged", 1, head_epochs=1)
    ten, _ = backbone_rows(monkeypatch, tiny_bert, toy_csv, tmp_path, "staged", 1, head_epochs=10)
    assert one == ten > data_rows  # the cache (train + validation + test once), then the all-layer stage
