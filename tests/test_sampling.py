"""The sampler against a sort-based reference on fixed logit vectors: the kept tokens exactly (top-k
and top-p cuts, ties included) and the frequencies of each token, on every path (candidates, full
vocabulary, bisection) and with rows of different settings in one batch."""

import numpy as np
import pytest
import tensorflow as tf

from tfx_gpt2.model.sampling import CANDIDATES, argmax, choose, top_candidates

# Large enough for the two-stage top-k (more blocks of 128 than candidates), small enough to be quick.
VOCAB = 16411


def reference_probs(logits, temperature=1.0, top_k=0, top_p=1.0, penalty=1.0, seen=None):
    """The distribution the sampler must draw from, by sorting: penalty, temperature, top-k,
    top-p on the renormalised remainder (tokens tied at a cut kept)."""
    x = np.asarray(logits, np.float64)
    if penalty != 1.0 and seen is not None:
        x = np.where(seen > 0, np.where(x > 0, x / penalty, x * penalty), x)
    x = x / temperature
    keep = np.ones_like(x, bool)
    if 0 < top_k < len(x):
        keep &= x >= np.sort(x)[::-1][top_k - 1]
    p = np.where(keep, np.exp(x - x[keep].max()), 0.0)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-x, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        cut = x[order][before < top_p].min()
        keep &= x >= cut
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


@tf.function(jit_compile=True)
def draw(logits, seen, temperature, top_k, top_p, penalty, u):
    return choose(logits, seen, temperature, top_k, top_p, penalty, u)


def sample(logits, n, temperature=1.0, top_k=0, top_p=1.0, penalty=1.0, seen=None, u=None, chunk=1000):
    """`n` draws for one logit vector, with stratified uniforms `(i + 0.5) / n` unless `u` is given
    (so each token's frequency is its probability to within 1/n)."""
    u = (np.arange(n) + 0.5) / n if u is None else u
    seen = np.zeros_like(logits) if seen is None else seen
    out = []
    for i in range(0, n, chunk):
        part = np.asarray(u[i:i + chunk], np.float32)
        b = len(part)
        args = [np.repeat(logits[None], b, 0), np.repeat(seen[None], b, 0)] + [
            np.full(b, v, dtype) for v, dtype in ((temperature, np.float32), (top_k, np.int32), (top_p, np.float32),
                                                  (penalty, np.float32))]
        out.append(draw(*args, part).numpy())
    return np.concatenate(out)


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    return (rng.standard_normal(VOCAB) * 2.5).astype(np.float32)


def check_distribution(ids, probs, n):
    freq = np.bincount(ids, minlength=len(probs)) / n
    drawn = set(np.flatnonzero(freq))
    assert drawn <= set(np.flatnonzero(probs > 0)), "a token outside the top-k / top-p cut was drawn"
    assert set(np.flatnonzero(probs > 2.0 / n)) <= drawn, "a token inside the cut was never drawn"
    assert np.abs(freq - probs).max() <= 1.0 / n + 1e-4


@pytest.mark.parametrize("settings", [
    dict(top_k=40),  # the serving default: candidate path
    dict(top_k=40, top_p=0.7, temperature=0.7),
    dict(top_k=CANDIDATES),  # the largest top-k the candidates hold
    dict(top_k=0),  # plain sampling over the whole vocabulary (OpenAI's default)
    dict(top_k=0, temperature=0.3, top_p=0.8),  # a nucleus the candidates hold
    dict(top_k=200),  # beyond the candidates: bisection
    dict(top_k=0, top_p=0.9),  # a nucleus of thousands of tokens: bisection
])
def test_each_path_draws_from_the_reference_distribution(logits, settings):
    n = 4000
    check_distribution(sample(logits, n, **settings), reference_probs(logits, **settings), n)


def test_ties_at_the_cut_are_all_kept():
    x = np.full(VOCAB, -20.0, np.float32)
    x[[7, 300, 9000, 12000, 16000]] = [3.0, 2.0, 2.0, 2.0, 1.0]  # three tokens tied in 2nd place
    for settings in (dict(top_k=2), dict(top_k=0, top_p=0.5)):
        probs = reference_probs(x, **settings)
        assert set(np.flatnonzero(probs)) == {7, 300, 9000, 12000}
        check_distribution(sample(x, 2000, **settings), probs, 2000)


def test_repetition_penalty_and_random_uniforms(logits):
    seen = np.zeros(VOCAB, np.float32)
    top = np.argsort(-logits)[:5]
    seen[top] = 1.0
    probs = reference_probs(logits, top_k=40, penalty=3.0, seen=seen)
    assert not probs[top[0]] and probs[top[4]] < reference_probs(logits, top_k=40)[top[4]]
    n = 20000
    ids = sample(logits, n, top_k=40, penalty=3.0, seen=seen, u=np.random.default_rng(1).random(n))
    freq = np.bincount(ids, minlength=VOCAB) / n
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(probs))
    # Each frequency within 5 standard deviations of its probability.
    assert np.all(np.abs(freq - probs) <= 5 * np.sqrt(probs * (1 - probs) / n) + 1e-9)


def test_rows_with_different_settings_share_a_batch(logits):
    settings = [dict(temperature=0.0, top_k=0), dict(top_k=40), dict(top_k=0), dict(top_k=500), dict(top_p=0.95)]
    u = np.full(len(settings), 0.37, np.float32)
    batch = draw(np.repeat(logits[None], len(settings), 0), np.zeros((len(settings), VOCAB), np.float32),
                 *[np.array([s.get(k, d) for s in settings], t) for k, d, t in (
                     ("temperature", 1.0, np.float32), ("top_k", 0, np.int32), ("top_p", 1.0, np.float32),
                     ("penalty", 1.0, np.float32))], u).numpy()
    alone = [sample(logits, 1, u=u[:1], **s)[0] for s in settings]
    assert batch.tolist() == alone
    assert batch[0] == int(np.argmax(logits))


def test_choice_rule_exactly():
    """The inverse CDF: over the kept candidates in descending probability (top-k, top-p), over
    the vocabulary in id order (plain sampling)."""
    probs = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    x = np.log(probs)
    u = np.array([0.05, 0.15, 0.35, 0.65, 0.95])
    assert sample(x, 5, u=u).tolist() == [0, 1, 2, 3, 3]  # id order: cumulative 0.1, 0.3, 0.6, 1.0
    assert sample(x, 5, top_k=2, u=u).tolist() == [3, 3, 3, 2, 2]  # 0.4/0.7, then 0.3/0.7
    assert sample(x, 5, top_p=0.5, u=u).tolist() == [3, 3, 3, 2, 2]  # 0.4 + 0.3 reach 0.5
    assert sample(x, 5, top_k=1, u=u).tolist() == [3] * 5
    assert sample(x, 5, temperature=0.0, u=u).tolist() == [3] * 5
    seen = np.array([0, 0, 0, 1], np.float32)  # a seen token's negative logit times the penalty
    assert sample(x, 5, temperature=0.0, penalty=10.0, seen=seen, u=u).tolist() == [2] * 5


def test_two_stage_top_k_and_argmax_match_tensorflow():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 50257)).astype(np.float32)  # GPT-2's vocabulary
    x[0, -3:] = [9.0, 8.0, 7.0]  # the largest in the last, shorter block of ids
    vals, ids = top_candidates(tf.constant(x), 65)
    ref_vals, ref_ids = tf.math.top_k(x, 65)
    assert np.array_equal(vals.numpy(), ref_vals.numpy()) and np.array_equal(ids.numpy(), ref_ids.numpy())
    assert argmax(tf.constant(x)).numpy().tolist() == np.argmax(x, -1).tolist()
