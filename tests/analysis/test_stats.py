"""The study's interval on synthetic data with a known answer."""

import numpy as np
import pytest

from tempo_core.analysis.stats import bootstrap_mean

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)


def test_the_95_percent_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    for draw, truth in ((lambda n: rng.normal(2.0, 1.5, n), 2.0), (lambda n: rng.exponential(0.5, n), 0.5)):
        hits = 0
        for i in range(400):
            est = bootstrap_mean(list(draw(60)), resamples=1000, seed=i)
            hits += est.low <= truth <= est.high
        assert 0.91 <= hits / 400 <= 0.98, hits / 400  # percentile bootstrap at n = 60: about 0.94


def test_the_interval_narrows_with_more_prompts_and_is_reproducible():
    rng = np.random.default_rng(2)
    small, large = list(rng.normal(0, 1, 20)), list(rng.normal(0, 1, 500))
    a, b = bootstrap_mean(small), bootstrap_mean(large)
    assert (b.high - b.low) < (a.high - a.low) / 3
    assert bootstrap_mean(small) == a  # same seed, same interval
    assert a.low < a.mean < a.high


def test_missing_values_are_left_out_and_tiny_samples_have_no_interval():
    est = bootstrap_mean([1.0, None, 3.0, float("nan")])
    assert est.n == 2 and est.mean == 2.0
    assert bootstrap_mean([]).mean is None and bootstrap_mean([4.0]).low is None
