"""The seed presets reproduce their articles; the factorized preset has the shapes of Balle et al."""
import torch

from aectl.train.report import SEED_CONV_ARTICLE_COUNTS, layer_counts
from aectl.train.zoo import FACTORIZED_QUALITIES, get_preset


def test_seed_conv_matches_article_parameter_counts():
    model = get_preset("seed-conv").build()
    assert [count for _, _, count in layer_counts(model)] == SEED_CONV_ARTICLE_COUNTS
    assert model.encode(torch.rand(2, 3, 64, 64)).shape == (2, 24, 4, 4)


def test_seed_dense_squeezes_to_a_quarter():
    model = get_preset("seed-dense").build().eval()
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(6912, 3456), (3456, 1728), (1728, 3456), (3456, 6912)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.encoder) == 2
    with torch.no_grad():
        y = model.encode(torch.rand(3, 3, 48, 48))
        x = model.decode(y)
    assert y.shape == (3, 1728)
    assert x.shape == (3, 3, 48, 48) and float(x.min()) >= 0 and float(x.max()) <= 1


def test_factorized_is_stride_16_and_quality_table_is_monotonic():
    preset = get_preset("factorized", quality=1, channels=(8, 12))
    model = preset.build()
    assert model.encode(torch.rand(1, 3, 48, 80)).shape == (1, 12, 3, 5)
    lambdas = [FACTORIZED_QUALITIES[q][0] for q in range(1, 9)]
    assert lambdas == sorted(lambdas)
