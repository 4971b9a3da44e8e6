import numpy as np
import pytest
import torch

from radiogate_model.data import SUBSETS, binary_label, load_split, train_val_split
from radiogate_model.metrics import classification_metrics, expected_calibration_error, roc_auc
from radiogate_model.model import (
    AGCNN,
    AGGREGATIONS,
    NORMALISATIONS,
    ModelConfig,
    count_parameters,
    normalise_attention,
)


def test_parameter_count_matches_paper():
    assert count_parameters(AGCNN(ModelConfig(gates=3, aggregation="ft"))) == 101_447


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("gates", [0, 1, 2, 3])
def test_fold_pooling_keeps_the_function(aggregation, gates):
    torch.manual_seed(0)
    model = AGCNN(ModelConfig(gates=gates, aggregation=aggregation)).eval()
    x = torch.randn(3, 1, 150, 150)
    before, _ = model(x)
    model.fold_pooling()
    after, _ = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_attention_normalisation_is_per_image(normalisation):
    torch.manual_seed(0)
    psi = torch.randn(8, 1, 37, 37) * 3 + 10
    batch = normalise_attention(psi, normalisation)
    other = psi.clone()
    other[0] *= 100  # a wildly different batchmate changes nobody else's map
    changed = normalise_attention(other, normalisation)
    for i in range(1, 8):
        alone = normalise_attention(psi[i : i + 1], normalisation)[0]
        torch.testing.assert_close(alone, batch[i], rtol=0, atol=1e-7)
        torch.testing.assert_close(changed[i], batch[i], rtol=0, atol=1e-7)


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_model_outputs_do_not_depend_on_batchmates(normalisation):
    torch.manual_seed(0)
    model = AGCNN(ModelConfig(normalisation=normalisation)).eval()
    x = torch.randn(8, 1, 150, 150)
    with torch.no_grad():
        batch_logits, batch_att = model(x)
        alone_logits, alone_att = model(x[3:4])
    torch.testing.assert_close(alone_logits[0], batch_logits[3], rtol=1e-5, atol=1e-5)
    assert [a.shape[-1] for a in batch_att] == [37, 75, 150]
    # Random weights leave psi almost flat, so range_norm's (max - min) is tiny and magnifies
    # float rounding (batched convolutions sum in another order); the maps still agree.
    for a, b in zip(alone_att, batch_att, strict=True):
        torch.testing.assert_close(a[0], b[3], rtol=1e-3, atol=1e-3)


def test_label_mapping():
    assert binary_label("100", "mirabest_confident") == 0
    assert binary_label("201", "mirabest_confident") == 1
    assert binary_label("110", "mirabest_confident") is None
    assert binary_label("110", "mirabest") == 0
    assert binary_label("210", "mirabest") == 1
    assert binary_label("300", "mirabest") is None
    assert binary_label("310", "mirabest") is None


@pytest.mark.parametrize(("subset", "n_train", "n_test"), [("mirabest_confident", 729, 104), ("mirabest", 1069, 153)])
def test_subset_sizes_match_paper(data_dir, subset, n_train, n_test):
    train = load_split(data_dir, subset, train=True)
    test = load_split(data_dir, subset, train=False)
    assert (len(train), len(test)) == (n_train, n_test)
    fri, frii = SUBSETS[subset]
    assert all((c in fri) == (y == 0) and (c in fri or c in frii) for c, y in zip(test.codes, test.labels, strict=True))
    tr, va = train_val_split(train, seed=1)
    assert len(va) == pytest.approx(0.2 * n_train, abs=2)
    assert not set(tr.filenames) & set(va.filenames)
    _tr2, va2 = train_val_split(train, seed=1)
    assert va.filenames == va2.filenames


def test_metrics_on_known_values():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(labels, probs)
    assert m["accuracy"] == 1.0
    assert m["FRI"]["f1"] == 1.0 and m["FRII"]["recall"] == 1.0
    # Perfectly accurate but under-confident: ECE is the mean gap 1 - confidence.
    assert expected_calibration_error(labels, probs) == pytest.approx(np.mean(1 - probs.max(1)))
