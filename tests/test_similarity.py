"""MeanMaxSim / MaxSim against hand-computed values and a naive Python-loop reference."""

import pytest
import torch

from tvr.models.similarity import mean_max_sim, mean_max_sim_pairwise, resolve_chunk_sizes

INF = float("inf")


def naive_reference(q, q_mask, v, v_mask, interaction="mms"):
    """Loop over every (query, token set, query token, candidate token); float64 throughout."""
    nq, lq, _ = q.shape
    nv, lv, _ = v.shape
    out = torch.empty(nq, nv, dtype=torch.float64)
    for a in range(nq):
        for b in range(nv):
            if not bool(v_mask[b].any()):  # a set without valid tokens: -inf for every query
                out[a, b] = -INF
                continue
            total, count = 0.0, 0
            for i in range(lq):
                if not bool(q_mask[a, i]):
                    continue
                count += 1
                best = -INF
                for j in range(lv):
                    if bool(v_mask[b, j]):
                        best = max(best, float(torch.dot(q[a, i].double(), v[b, j].double())))
                total += best
            if interaction == "mms":
                out[a, b] = total / count if count else 0.0
            else:
                out[a, b] = total
    return out


def random_case(nq, lq, nv, lv, d, seed, dtype=torch.float64, p_pad=0.3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(nq, lq, d, generator=g, dtype=dtype)
    v = torch.randn(nv, lv, d, generator=g, dtype=dtype)
    q_mask = torch.rand(nq, lq, generator=g) > p_pad
    v_mask = torch.rand(nv, lv, generator=g) > p_pad
    q_mask[:, 0] = True  # every query and token set keeps at least one valid token
    v_mask[:, 0] = True
    return q, q_mask, v, v_mask


def hand_case():
    # Query 0: tokens (1,0), (0,1) valid, (5,5) padded. Query 1: (1,1) valid, (2,0) padded,
    # (0,0) padded.
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]],
                      [[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])
    q_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # Video A: (1,0), (0.5,0.5) valid, (10,10) padded. Video B: (0,2), (-1,0), (3,-1) valid.
    # Video C: nothing valid.
    v = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [10.0, 10.0]],
                      [[0.0, 2.0], [-1.0, 0.0], [3.0, -1.0]],
                      [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    v_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    return q, q_mask, v, v_mask


def test_hand_computed_mms_and_maxsim():
    q, q_mask, v, v_mask = hand_case()
    # Query 0 vs A: (1,0) -> max(1, 0.5) = 1; (0,1) -> max(0, 0.5) = 0.5. MMS 0.75, MaxSim 1.5.
    # Query 0 vs B: (1,0) -> max(0, -1, 3) = 3; (0,1) -> max(2, 0, -1) = 2. MMS 2.5, MaxSim 5.
    # Query 1 vs A: (1,1) -> max(1, 1) = 1. Query 1 vs B: (1,1) -> max(2, -1, 2) = 2.
    # Video C has no valid token: -inf.
    expected_mms = torch.tensor([[0.75, 2.5, -INF], [1.0, 2.0, -INF]])
    expected_maxsim = torch.tensor([[1.5, 5.0, -INF], [1.0, 2.0, -INF]])
    for chunk in (None, 1, 2):
        assert torch.equal(mean_max_sim(q, q_mask, v, v_mask, chunk_size=chunk), expected_mms)
        assert torch.equal(mean_max_sim(q, q_mask, v, v_mask, "maxsim", chunk_size=chunk), expected_maxsim)
    assert torch.equal(mean_max_sim_pairwise(q, q_mask, v[:2], v_mask[:2]), torch.tensor([0.75, 2.0]))
    assert torch.equal(mean_max_sim_pairwise(q, q_mask, v[:2], v_mask[:2], "maxsim"), torch.tensor([1.5, 2.0]))


def test_hand_computed_all_valid_and_empty_query():
    q = torch.tensor([[[1.0, 2.0], [3.0, -1.0]], [[9.0, 9.0], [9.0, 9.0]]])
    q_mask = torch.tensor([[True, True], [False, False]])
    v = torch.tensor([[[1.0, 1.0]], [[0.0, -1.0]]])
    v_mask = torch.ones(2, 1, dtype=torch.bool)
    # Query 0 vs (1,1): 3 and 2 -> mean 2.5. vs (0,-1): -2 and 1 -> mean -0.5. Query 1 is empty: 0.
    expected = torch.tensor([[2.5, -0.5], [0.0, 0.0]])
    assert torch.equal(mean_max_sim(q, q_mask, v, v_mask), expected)
    # All query tokens valid (the no-compaction path).
    assert torch.equal(mean_max_sim(q[:1], q_mask[:1], v, v_mask), expected[:1])


@pytest.mark.parametrize("interaction", ["mms", "maxsim"])
def test_matches_naive_reference_chunked_and_unchunked(interaction):
    for seed, (nq, lq, nv, lv, d) in enumerate([(5, 4, 7, 5, 8), (3, 6, 11, 3, 4), (1, 1, 4, 2, 3)]):
        q, q_mask, v, v_mask = random_case(nq, lq, nv, lv, d, seed)
        ref = naive_reference(q, q_mask, v, v_mask, interaction)
        full = mean_max_sim(q, q_mask, v, v_mask, interaction, chunk_size=nv)
        torch.testing.assert_close(full, ref, rtol=1e-12, atol=1e-12)
        for chunk, q_chunk in [(None, None), (1, None), (3, 2), (4, 1), (nv + 5, nq + 3), (2, nq)]:
            out = mean_max_sim(q, q_mask, v, v_mask, interaction, chunk_size=chunk, q_chunk_size=q_chunk)
            torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)
        # Automatic chunking with a tiny element budget forces many chunks over both axes.
        out = mean_max_sim(q, q_mask, v, v_mask, interaction, max_chunk_elements=7)
        torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)
        # The autograd path (max with indices, concatenated blocks) gives the same values.
        out = mean_max_sim(q.clone().requires_grad_(), q_mask, v, v_mask, interaction, chunk_size=3, q_chunk_size=2)
        torch.testing.assert_close(out.detach(), full, rtol=1e-12, atol=1e-12)
        pair = mean_max_sim_pairwise(q[:min(nq, nv)], q_mask[:min(nq, nv)], v[:min(nq, nv)],
                                     v_mask[:min(nq, nv)], interaction)
        torch.testing.assert_close(pair, torch.diagonal(full[:min(nq, nv), :min(nq, nv)]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("interaction", ["mms", "maxsim"])
def test_evaluation_and_autograd_paths_match_reference_across_uneven_chunks(interaction):
    """The no-grad path reuses one set of buffers for every block: chunks of different sizes
    (a short last chunk on both axes), query chunks with different numbers of valid tokens, an
    empty query, an all-valid query chunk after compacted ones, and empty token sets in some
    chunks only must not leak values from one block into the next."""
    q, q_mask, v, v_mask = random_case(7, 5, 10, 4, 6, seed=31)
    q_mask[2] = False  # an empty query
    q_mask[3, 1:] = False  # one valid token
    q_mask[5:] = True  # the last query chunk (q_chunk_size 3 -> rows 6..) has every token valid
    v_mask[4] = False  # empty sets in the second chunk only (chunk_size 3)
    v_mask[9] = False  # and in the short last chunk
    v_mask[6, 1:] = False
    ref = naive_reference(q, q_mask, v, v_mask, interaction)
    for chunk, q_chunk in [(3, 3), (4, 2), (1, 7), (10, 1)]:
        with torch.no_grad():
            fast = mean_max_sim(q, q_mask, v, v_mask, interaction, chunk_size=chunk, q_chunk_size=q_chunk)
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
        q_grad = q.clone().requires_grad_()
        slow = mean_max_sim(q_grad, q_mask, v, v_mask, interaction, chunk_size=chunk, q_chunk_size=q_chunk)
        assert slow.requires_grad and not fast.requires_grad
        torch.testing.assert_close(slow.detach(), ref, rtol=1e-12, atol=1e-12)
    # Inputs that need no gradient take the buffer path with autograd on, too.
    torch.testing.assert_close(mean_max_sim(q, q_mask, v, v_mask, interaction, chunk_size=3, q_chunk_size=3), ref,
                               rtol=1e-12, atol=1e-12)


def test_add_to_sums_branches_in_place():
    """Two token sets (two branches) summed through add_to equal the sum of the two references; without
    autograd the given matrix is updated and returned (no other Nq x Nv matrix), with autograd it is not."""
    q, q_mask, v, v_mask = random_case(5, 4, 7, 3, 6, seed=41)
    _, _, v2, v2_mask = random_case(5, 4, 7, 5, 6, seed=42)
    v2_mask[3] = False  # an empty set in the second branch: -inf in the sum
    expected = naive_reference(q, q_mask, v, v_mask) + naive_reference(q, q_mask, v2, v2_mask)
    with torch.no_grad():
        total = mean_max_sim(q, q_mask, v, v_mask, chunk_size=3, q_chunk_size=2)
        summed = mean_max_sim(q, q_mask, v2, v2_mask, chunk_size=2, q_chunk_size=3, add_to=total)
    assert summed is total
    torch.testing.assert_close(summed, expected, rtol=1e-12, atol=1e-12)
    first = mean_max_sim(q, q_mask, v, v_mask)
    before = first.clone()
    grad_sum = mean_max_sim(q.clone().requires_grad_(), q_mask, v2, v2_mask, add_to=first)
    torch.testing.assert_close(grad_sum.detach(), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(first, before)
    with pytest.raises(ValueError, match="add_to"):
        mean_max_sim(q, q_mask, v2, v2_mask, add_to=first[:, :3])


def test_automatic_chunks_balance_the_block_within_budget():
    # Budget 2**21: isqrt = 1448 query tokens -> 1448 // 32 = 45 queries; 2**21 // (45 * 32 * 26) = 56
    # videos, rounded down to a multiple of 32: 32; then 2**21 // (32 * 32 * 26) = 78 queries.
    assert resolve_chunk_sizes(1000, 32, 1000, 26, None, None, 2 ** 21) == (32, 78)
    # Few queries (a training batch): they all fit, the videos take the rest of the budget
    # (2**21 // (8 * 832) = 315 -> 288).
    assert resolve_chunk_sizes(8, 32, 10_000, 26, None, None, 2 ** 21) == (288, 8)
    # Few videos: all of them (no rounding), and the queries take the rest.
    assert resolve_chunk_sizes(10_000, 32, 10, 26, None, None, 2 ** 21) == (10, 252)
    # An explicit video chunk is kept; the query chunk fills the budget (2**21 // (32 * 26 * 256) = 9).
    assert resolve_chunk_sizes(1000, 32, 1000, 26, 256, None, 2 ** 21) == (256, 9)
    for nq, lq, nv, lv, budget in [(1000, 32, 1000, 26, 2 ** 21), (3, 77, 5000, 12, 2 ** 16), (500, 8, 7, 100, 10 ** 6),
                                   (10_000, 32, 10_000, 14, 2 ** 25)]:
        c, qc = resolve_chunk_sizes(nq, lq, nv, lv, None, None, budget)
        assert 1 <= c <= nv and 1 <= qc <= nq
        assert qc * lq * c * lv <= budget
        assert c == nv or c < 32 or c % 32 == 0


def test_float32_matches_reference():
    q, q_mask, v, v_mask = random_case(6, 5, 9, 4, 16, seed=7, dtype=torch.float32)
    ref = naive_reference(q, q_mask, v, v_mask).float()
    torch.testing.assert_close(mean_max_sim(q, q_mask, v, v_mask, chunk_size=4), ref, rtol=1e-5, atol=1e-5)


def test_bool_and_numeric_masks_agree():
    q, q_mask, v, v_mask = random_case(4, 5, 6, 4, 8, seed=3)
    expected = mean_max_sim(q, q_mask, v, v_mask)
    for conv in (lambda m: m.long(), lambda m: m.int(), lambda m: m.float(), lambda m: m.to(torch.uint8)):
        torch.testing.assert_close(mean_max_sim(q, conv(q_mask), v, conv(v_mask)), expected, rtol=0, atol=0)
        torch.testing.assert_close(mean_max_sim_pairwise(q[:4], conv(q_mask[:4]), v[:4], conv(v_mask[:4])),
                                   torch.diagonal(expected[:4, :4]), rtol=0, atol=0)


def test_padded_token_values_change_nothing():
    q, q_mask, v, v_mask = random_case(5, 6, 8, 5, 8, seed=11)
    expected = mean_max_sim(q, q_mask, v, v_mask, chunk_size=3)
    expected_maxsim = mean_max_sim(q, q_mask, v, v_mask, "maxsim", chunk_size=3)
    expected_pair = mean_max_sim_pairwise(q[:5], q_mask[:5], v[:5], v_mask[:5])
    for fill in (1e6, -1e6, INF, float("nan")):
        q2, v2 = q.clone(), v.clone()
        q2[~q_mask] = fill
        v2[~v_mask] = fill
        torch.testing.assert_close(mean_max_sim(q2, q_mask, v2, v_mask, chunk_size=3), expected, rtol=0, atol=0)
        torch.testing.assert_close(mean_max_sim(q2, q_mask, v2, v_mask, "maxsim", chunk_size=3), expected_maxsim,
                                   rtol=0, atol=0)
        torch.testing.assert_close(mean_max_sim_pairwise(q2[:5], q_mask[:5], v2[:5], v_mask[:5]),
                                   expected_pair, rtol=0, atol=0)


def test_padded_token_with_huge_similarity_never_wins():
    q, q_mask, v, v_mask = random_case(3, 4, 5, 4, 8, seed=5)
    v_mask[:, -1] = False
    v2 = v.clone()
    v2[:, -1] = 1000.0 * q[0, 0]  # a padded token aligned with a query token: similarity ~1000 |q|^2
    out = mean_max_sim(q, q_mask, v2, v_mask)
    assert out.max() < 50  # unit-ish random vectors in 8-D: genuine similarities are far below
    torch.testing.assert_close(out, naive_reference(q, q_mask, v, v_mask), rtol=1e-12, atol=1e-12)


def test_maxsim_is_mms_times_query_length():
    q, q_mask, v, v_mask = random_case(5, 6, 7, 3, 8, seed=2)
    counts = q_mask.sum(1, keepdim=True).double()
    torch.testing.assert_close(mean_max_sim(q, q_mask, v, v_mask, "maxsim"),
                               mean_max_sim(q, q_mask, v, v_mask, "mms") * counts, rtol=1e-12, atol=1e-12)


def test_empty_token_set_scores_minus_inf_and_empty_inputs():
    q, q_mask, v, v_mask = random_case(2, 3, 3, 4, 5, seed=1)
    v_mask[1] = False
    out = mean_max_sim(q, q_mask, v, v_mask)
    assert torch.isinf(out[:, 1]).all() and (out[:, 1] < 0).all()
    assert torch.isfinite(out[:, [0, 2]]).all()
    q_mask[0] = False  # an empty query still scores -inf against an empty set, 0 elsewhere
    out = mean_max_sim(q, q_mask, v, v_mask)
    assert torch.equal(out[0], torch.tensor([0.0, -INF, 0.0], dtype=out.dtype))
    assert torch.equal(mean_max_sim_pairwise(q[:2], q_mask[:2], v[:2], v_mask[:2])[:2],
                       torch.tensor([0.0, out[1, 1].item()], dtype=out.dtype))
    assert mean_max_sim(q[:0], q_mask[:0], v, v_mask).shape == (0, 3)
    assert mean_max_sim(q, q_mask, v[:0], v_mask[:0]).shape == (2, 0)


def test_gradcheck_mean_max_sim():
    for interaction in ("mms", "maxsim"):
        q, q_mask, v, v_mask = random_case(3, 4, 4, 3, 5, seed=21)
        q.requires_grad_()
        v.requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b: mean_max_sim(a, q_mask, b, v_mask, interaction, chunk_size=3, q_chunk_size=2), (q, v))
        assert torch.autograd.gradcheck(
            lambda a, b: mean_max_sim_pairwise(a, q_mask, b[:3], v_mask[:3], interaction), (q, v))


def test_gradient_of_padded_tokens_is_zero():
    q, q_mask, v, v_mask = random_case(4, 5, 6, 4, 8, seed=9)
    q.requires_grad_()
    v.requires_grad_()
    mean_max_sim(q, q_mask, v, v_mask, chunk_size=4).sum().backward()
    assert (q.grad[~q_mask] == 0).all() and (v.grad[~v_mask] == 0).all()
    assert q.grad[q_mask].abs().sum() > 0 and v.grad[v_mask].abs().sum() > 0


def test_rejects_bad_arguments():
    q, q_mask, v, v_mask = random_case(2, 3, 2, 3, 4, seed=0)
    with pytest.raises(ValueError, match="interaction"):
        mean_max_sim(q, q_mask, v, v_mask, interaction="mean")
    with pytest.raises(ValueError, match="q_mask"):
        mean_max_sim(q, q_mask[:, :2], v, v_mask)
    with pytest.raises(ValueError, match="embedding"):
        mean_max_sim(q, q_mask, v[..., :3], v_mask)
    with pytest.raises(ValueError, match="chunk_size"):
        mean_max_sim(q, q_mask, v, v_mask, chunk_size=0)
    with pytest.raises(ValueError, match="3-D"):
        mean_max_sim(q[0], q_mask, v, v_mask)
    with pytest.raises(ValueError, match="pairwise"):
        mean_max_sim_pairwise(q, q_mask, v[:1], v_mask[:1])


def test_negative_similarities_with_padding_are_not_clipped_at_zero():
    # Every valid similarity is negative; a zeroed padded token would wrongly win with 0.
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    q_mask = torch.tensor([[1, 1]])
    v = torch.tensor([[[0.0, 0.0], [-1.0, -3.0], [-2.0, -0.5]]])
    v_mask = torch.tensor([[0, 1, 1]])
    # (1,0): max(-1, -2) = -1. (0,1): max(-3, -0.5) = -0.5. MMS -0.75, MaxSim -1.5.
    assert torch.equal(mean_max_sim(q, q_mask, v, v_mask), torch.tensor([[-0.75]]))
    assert torch.equal(mean_max_sim(q, q_mask, v, v_mask, "maxsim"), torch.tensor([[-1.5]]))
    assert torch.equal(mean_max_sim_pairwise(q, q_mask, v, v_mask), torch.tensor([-0.75]))
