"""Retrieval metrics against hand-computed cases and a naive per-row reference."""

import math
import time

import numpy as np
import pytest
import torch

from tvr.utils.metrics import (compute_metrics, dual_softmax_rerank, format_metrics, metrics_from_ranks,
                               t2v_metrics, t2v_ranks, v2t_metrics, v2t_ranks)


def naive_t2v_ranks(sim, q2v):
    """Per-row loop: 1 + number of other columns scoring >= the GT (NaN = -inf)."""
    sim = np.where(np.isnan(sim), -np.inf, np.asarray(sim, dtype=np.float64))
    ranks = []
    for q, row in enumerate(sim):
        g = q2v[q]
        ranks.append(1 + sum(1 for j in range(len(row)) if j != g and row[j] >= row[g]))
    return np.array(ranks)


def naive_v2t_ranks(sim, q2v):
    """Per-video loop: best GT caption vs every caption of other videos (NaN = -inf)."""
    sim = np.where(np.isnan(sim), -np.inf, np.asarray(sim, dtype=np.float64))
    ranks = []
    for v in range(sim.shape[1]):
        gt = [q for q in range(sim.shape[0]) if q2v[q] == v]
        if not gt:
            continue
        best = max(sim[q, v] for q in gt)
        ranks.append(1 + sum(1 for q in range(sim.shape[0]) if q2v[q] != v and sim[q, v] >= best))
    return np.array(ranks)


def test_perfect_diagonal():
    sim = np.eye(20) + 0.01 * np.random.default_rng(0).random((20, 20))
    m = compute_metrics(sim)
    assert m["R1"] == m["R5"] == m["R10"] == 100.0
    assert m["MR"] == m["MedianR"] == m["MdR"] == 1.0
    assert m["MeanR"] == m["MnR"] == 1.0


def test_hand_built_4x4():
    # Ranks by hand: row0 GT 0.9 best -> 1; row1 GT 0.5 below 0.8, 0.6 -> 3;
    # row2 GT 0.1 below all three -> 4; row3 GT 0.7 below 0.9 -> 2.
    sim = np.array([[0.9, 0.1, 0.2, 0.3],
                    [0.8, 0.5, 0.6, 0.1],
                    [0.3, 0.2, 0.1, 0.4],
                    [0.0, 0.9, 0.2, 0.7]])
    assert t2v_ranks(sim, np.arange(4)).tolist() == [1, 3, 4, 2]
    m = compute_metrics(sim)
    assert m["R1"] == 25.0 and m["R5"] == 100.0 and m["R10"] == 100.0
    assert m["MR"] == 2.5  # median of 1, 2, 3, 4 (numpy median, as DRL)
    assert m["MeanR"] == 2.5
    # Video-to-text on 1:1 data: columns. col0 GT 0.9 best -> 1; col1 GT 0.5 below 0.9 -> 2;
    # col2 GT 0.1 below 0.2, 0.6, 0.2 -> 4; col3 GT 0.7 best -> 1.
    assert t2v_ranks(sim.T, np.arange(4)).tolist() == [1, 2, 4, 1]
    assert v2t_ranks(sim, np.arange(4)).tolist() == [1, 2, 4, 1]


def test_all_equal_row_is_worst_rank_not_first():
    sim = np.eye(5)
    sim[2] = 0.5  # every score of row 2 tied
    ranks = t2v_ranks(sim, np.arange(5)).tolist()
    assert ranks == [1, 1, 5, 1, 1]
    m = compute_metrics(sim)
    assert m["R1"] == 80.0
    # Partial tie: GT tied with one other column -> rank 2.
    sim = np.array([[0.5, 0.5, 0.1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert t2v_ranks(sim, np.arange(3)).tolist() == [2, 1, 1]
    # A collapsed model scoring everything 0 gets chance-level worst ranks, not R@1 = 100.
    assert compute_metrics(np.zeros((7, 7)))["R1"] == 0.0
    assert compute_metrics(np.zeros((7, 7)))["MeanR"] == 7.0


def test_nan_counts_as_worst():
    sim = np.array([[np.nan, 0.1, 0.2],  # NaN GT -> worst (3)
                    [0.3, 0.5, np.nan],  # NaN distractor never outranks -> 1
                    [np.nan, np.nan, np.nan]])  # all NaN -> tie at worst -> 3
    assert t2v_ranks(sim, np.arange(3)).tolist() == [3, 1, 3]
    assert t2v_ranks(torch.tensor(sim), np.arange(3)).tolist() == [3, 1, 3]


def test_multi_sentence_t2v_and_v2t_by_hand():
    # 5 captions, 3 videos: captions 0,1 -> video 0; 2 -> video 1; 3,4 -> video 2.
    q2v = [0, 0, 1, 2, 2]
    sim = np.array([
        # v0   v1   v2
        [0.9, 0.1, 0.2],  # c0 (v0): GT 0.9 best -> t2v rank 1
        [0.2, 0.6, 0.3],  # c1 (v0): GT 0.2 below 0.6, 0.3 -> rank 3
        [0.4, 0.4, 0.0],  # c2 (v1): GT 0.4 tied with v0 -> rank 2 (worst of tie)
        [0.1, 0.2, 0.8],  # c3 (v2): GT 0.8 best -> rank 1
        [0.5, 0.1, 0.3],  # c4 (v2): GT 0.3 below 0.5 -> rank 2
    ])
    assert t2v_ranks(sim, q2v).tolist() == [1, 3, 2, 1, 2]
    m = t2v_metrics(sim, q2v)
    assert m["R1"] == pytest.approx(40.0) and m["R5"] == 100.0
    assert m["MR"] == 2.0 and m["MeanR"] == pytest.approx(9 / 5)
    # v2t: v0 best caption c0 (0.9); other videos' captions in column 0: 0.4, 0.1, 0.5 -> rank 1.
    #      v1 best caption c2 (0.4); others: 0.1, 0.6, 0.2, 0.1 -> 0.6 beats it -> rank 2.
    #      v2 best caption c3 (0.8); others: 0.2, 0.3, 0.0 -> rank 1 (c4's 0.3 is correct, not counted).
    assert v2t_ranks(sim, q2v).tolist() == [1, 2, 1]
    m = v2t_metrics(sim, q2v)
    assert m["R1"] == pytest.approx(200 / 3) and m["MeanR"] == pytest.approx(4 / 3) and m["MR"] == 1.0


def test_v2t_ties_and_other_correct_captions():
    q2v = [0, 0, 1]
    # v0: captions c0, c1 both 0.5 (tie among correct captions is fine) and distractor c2 at 0.5 too
    # -> the distractor ties the best correct caption -> rank 2.
    sim = np.array([[0.5, 0.0], [0.5, 0.0], [0.5, 1.0]])
    assert v2t_ranks(sim, q2v).tolist() == [2, 1]


def test_v2t_skips_videos_without_caption():
    sim = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])  # 2 captions, 3 videos, video 2 has none
    assert v2t_ranks(sim, [0, 1]).tolist() == [1, 1, 0]
    assert v2t_metrics(sim, [0, 1])["R1"] == 100.0
    assert t2v_ranks(sim, [0, 1]).tolist() == [1, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_matches_naive_loops(seed):
    rng = np.random.default_rng(seed)
    nq, nv = 37, 11
    # Coarse values produce many ties; a few NaN.
    sim = rng.integers(0, 4, size=(nq, nv)).astype(np.float64)
    sim[rng.random((nq, nv)) < 0.03] = np.nan
    q2v = rng.integers(0, nv, size=nq)
    assert t2v_ranks(sim, q2v).tolist() == naive_t2v_ranks(sim, q2v).tolist()
    got = v2t_ranks(sim, q2v)
    assert got[got > 0].tolist() == naive_v2t_ranks(sim, q2v).tolist()
    # Square 1:1 data: compute_metrics equals the naive ranks summarised.
    sq = rng.normal(size=(25, 25)).round(1)
    assert compute_metrics(sq) == metrics_from_ranks(naive_t2v_ranks(sq, np.arange(25)))
    assert t2v_metrics(sq, np.arange(25)) == compute_metrics(sq)
    assert v2t_metrics(sq, np.arange(25)) == compute_metrics(sq.T)


def test_without_ties_matches_sort_based_ranks():
    # With distinct scores, the worst-tie rule equals the usual sort position (DRL's convention).
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(40, 40))
    order = np.argsort(-sim, axis=1)
    sort_rank = np.array([int(np.where(order[i] == i)[0][0]) + 1 for i in range(40)])
    assert t2v_ranks(sim, np.arange(40)).tolist() == sort_rank.tolist()


def test_rectangular_and_chunking(monkeypatch):
    rng = np.random.default_rng(4)
    sim = rng.integers(0, 3, size=(13, 29)).astype(np.float32)
    want = naive_t2v_ranks(sim, np.arange(13))
    assert t2v_ranks(sim, np.arange(13)).tolist() == want.tolist()
    # Force tiny chunks so every chunk boundary path runs.
    import tvr.utils.metrics as metrics_mod
    monkeypatch.setattr(metrics_mod, "_CHUNK_ELEMENTS", 40)
    assert t2v_ranks(sim, np.arange(13)).tolist() == want.tolist()
    q2v = rng.integers(0, 29, size=13)
    got = v2t_ranks(sim, q2v)
    assert got[got > 0].tolist() == naive_v2t_ranks(sim, q2v).tolist()
    assert compute_metrics(sim) == metrics_from_ranks(want)
    with pytest.raises(ValueError, match="N <= M"):
        compute_metrics(sim.T)


def test_input_types_and_validation():
    sim = np.random.default_rng(5).normal(size=(6, 6))
    ref = compute_metrics(sim)
    assert compute_metrics(torch.tensor(sim)) == ref
    assert compute_metrics(torch.tensor(sim, dtype=torch.float32)) == compute_metrics(sim.astype(np.float32))
    assert compute_metrics(torch.tensor(sim, requires_grad=True)) == ref
    with pytest.raises(ValueError, match="query rows"):
        t2v_ranks(sim, [0, 1])
    with pytest.raises(ValueError, match="must lie in"):
        t2v_ranks(sim, [0, 1, 2, 3, 4, 6])
    with pytest.raises(ValueError, match="2-D"):
        compute_metrics(np.zeros(3))


def test_large_matrix_is_fast():
    sim = torch.randn(3000, 3000)
    t0 = time.perf_counter()
    compute_metrics(sim)
    v2t_metrics(sim, torch.arange(3000))
    assert time.perf_counter() - t0 < 5.0


def test_dual_softmax_formula_and_effect():
    sim = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    out = dual_softmax_rerank(sim, temperature=0.1)
    prior = torch.softmax(sim / 0.1, dim=0)
    assert torch.allclose(out, sim * prior * 2)
    # Column 0 is a "hub" scoring high for both queries: row 0 prefers it before (0.9 > 0.8), but after
    # re-ranking row 0 picks column 1, which only it likes.
    assert sim[0].argmax() == 0 and out[0].argmax() == 1
    # numpy in, numpy out; column chunking gives the same answer.
    big = np.random.default_rng(6).normal(size=(9, 14)).astype(np.float32)
    ref = big * torch.softmax(torch.from_numpy(big) / 0.01, dim=0).numpy() * 9
    got = dual_softmax_rerank(big)
    assert isinstance(got, np.ndarray) and np.allclose(got, ref, atol=1e-6)
    with pytest.raises(ValueError):
        dual_softmax_rerank(big, temperature=0)


def test_dual_softmax_v2t_direction():
    sim = torch.randn(7, 5)
    out = dual_softmax_rerank(sim, dim=1)
    assert out.shape == (7, 5)
    assert torch.allclose(out, sim * torch.softmax(sim / 0.01, dim=1) * 5)
    assert torch.allclose(out, dual_softmax_rerank(sim.T).T)
    # All -inf column (an undecodable video) -> NaN -> worst rank for that video's queries.
    sim[:, 2] = float("-inf")
    assert torch.isnan(dual_softmax_rerank(sim)[:, 2]).all()
    ranks = t2v_ranks(dual_softmax_rerank(sim), [0, 1, 2, 3, 4, 2, 2])
    assert ranks[2] == ranks[5] == ranks[6] == 5


def test_dual_softmax_chunked(monkeypatch):
    import tvr.utils.metrics as metrics_mod
    big = torch.randn(9, 14)
    ref = dual_softmax_rerank(big)
    monkeypatch.setattr(metrics_mod, "_CHUNK_ELEMENTS", 20)  # 2 columns per chunk
    assert torch.allclose(dual_softmax_rerank(big), ref)


def test_format_metrics():
    line = format_metrics("t2v", {"R1": 45.21, "R5": 72.0, "R10": 81.25, "MR": 2.0, "MeanR": 14.34})
    assert line == "t2v: R@1 45.2 | R@5 72.0 | R@10 81.2 | MdR 2.0 | MnR 14.3"
    assert "\n" not in format_metrics("v2t", compute_metrics(np.eye(3)))
    assert not math.isnan(compute_metrics(np.eye(3))["MeanR"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensor_matches_cpu():
    rng = np.random.default_rng(7)
    sim = torch.tensor(rng.integers(0, 4, size=(30, 12)).astype(np.float32))
    q2v = torch.tensor(rng.integers(0, 12, size=30))
    assert t2v_ranks(sim.cuda(), q2v).tolist() == t2v_ranks(sim, q2v).tolist()
    assert v2t_ranks(sim.cuda(), q2v).tolist() == v2t_ranks(sim, q2v).tolist()
    assert torch.allclose(dual_softmax_rerank(sim.cuda()).cpu(), dual_softmax_rerank(sim))
