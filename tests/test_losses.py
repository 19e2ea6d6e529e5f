"""Sigmoid (SigLIP) and symmetric InfoNCE losses against straightforward loop references."""

import math

import pytest
import torch
import torch.nn.functional as F

from tvr.models.losses import (InfoNCELoss, RetrievalLoss, SigmoidLoss, infonce_loss, sigmoid_loss,
                               symmetric_infonce_loss)


def sigmoid_reference(scores, t, c, row_offset=0):
    """-(1/b) sum_ij log sigmoid(z_ij (e^t s_ij + c)), one pair at a time in Python floats."""
    b, n = scores.shape
    total = 0.0
    for i in range(b):
        for j in range(n):
            z = 1.0 if j == row_offset + i else -1.0
            x = z * (math.exp(t) * float(scores[i, j]) + c)
            total += math.log(1.0 / (1.0 + math.exp(-x)))
    return -total / b


def infonce_reference(scores, scale, row_offset=0):
    """Mean over rows of -log softmax at the positive column, in Python floats."""
    b, n = scores.shape
    total = 0.0
    for i in range(b):
        logits = [scale * float(scores[i, j]) for j in range(n)]
        m = max(logits)
        log_z = m + math.log(sum(math.exp(x - m) for x in logits))
        total += log_z - logits[row_offset + i]
    return total / b


def rand_scores(b, n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, generator=g, dtype=dtype) * 2 - 1  # cosine-like range


@pytest.mark.parametrize("b,n,offset", [(4, 4, 0), (3, 7, 2), (2, 6, 4), (1, 5, 0)])
def test_sigmoid_loss_matches_loop_reference(b, n, offset):
    s = rand_scores(b, n, seed=b * 10 + offset)
    for t, c in [(math.log(10.0), -10.0), (0.3, 1.5), (-1.0, 0.0)]:
        got = sigmoid_loss(s, torch.tensor(t, dtype=torch.float64), torch.tensor(c, dtype=torch.float64), offset)
        assert got.item() == pytest.approx(sigmoid_reference(s, t, c, offset), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("b,n,offset", [(4, 4, 0), (3, 7, 2), (2, 6, 4)])
def test_infonce_matches_loop_reference_and_cross_entropy(b, n, offset):
    s_t2v = rand_scores(b, n, seed=1 + offset)
    s_v2t = rand_scores(b, n, seed=2 + offset)
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    scale = 1 / 0.07
    expected = 0.5 * (infonce_reference(s_t2v, scale, offset) + infonce_reference(s_v2t, scale, offset))
    got = symmetric_infonce_loss(s_t2v, s_v2t, log_scale, offset)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # An independent formulation: log_softmax + gather of the positive column.
    pos = torch.arange(offset, offset + b)
    one_dir = -torch.log_softmax(scale * s_t2v, dim=1)[torch.arange(b), pos].mean()
    torch.testing.assert_close(infonce_loss(s_t2v, log_scale, offset), one_dir, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(infonce_loss(s_t2v, log_scale, offset), F.cross_entropy(scale * s_t2v, pos),
                               rtol=1e-12, atol=1e-12)


def test_logit_scale_is_capped_at_100():
    s = rand_scores(3, 3, seed=0)
    ls = torch.tensor(math.log(500.0), dtype=torch.float64, requires_grad=True)
    loss = symmetric_infonce_loss(s, s.t(), ls)
    assert loss.item() == pytest.approx(0.5 * (infonce_reference(s, 100.0) + infonce_reference(s.t(), 100.0)))
    loss.backward()
    assert ls.grad.item() == 0.0  # no gradient past the cap, as clamping the parameter in CLIP


def test_row_offset_out_of_range_is_rejected():
    s = rand_scores(3, 5, seed=0)
    with pytest.raises(ValueError):
        sigmoid_loss(s, torch.tensor(0.0), torch.tensor(0.0), row_offset=3)
    with pytest.raises(ValueError):
        infonce_loss(s, torch.tensor(0.0), row_offset=-1)
    with pytest.raises(ValueError):
        InfoNCELoss()(s)  # non-square scores need scores_v2t


def test_local_row_losses_average_to_the_global_loss():
    """What DDP relies on: the mean over W shards of per-shard losses (local rows vs all columns,
    offset rank * b) equals the one-process loss on the global batch."""
    B, W = 8, 4
    b = B // W
    s = rand_scores(B, B, seed=3)
    t, c = torch.tensor(1.1, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    ls = torch.tensor(2.0, dtype=torch.float64)
    shards = [sigmoid_loss(s[r * b:(r + 1) * b], t, c, r * b) for r in range(W)]
    torch.testing.assert_close(sum(shards) / W, sigmoid_loss(s, t, c))
    shards = [symmetric_infonce_loss(s[r * b:(r + 1) * b], s.t()[r * b:(r + 1) * b], ls, r * b) for r in range(W)]
    torch.testing.assert_close(sum(shards) / W, symmetric_infonce_loss(s, s.t(), ls))


def test_gradcheck_losses():
    s = rand_scores(3, 5, seed=4).requires_grad_()
    s2 = rand_scores(3, 5, seed=5).requires_grad_()
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    ls = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, x, y: sigmoid_loss(a, x, y, row_offset=2), (s, t, c))
    assert torch.autograd.gradcheck(lambda a, a2, x: symmetric_infonce_loss(a, a2, x, row_offset=1), (s, s2, ls))


def test_modules_initial_values_and_parameter_names():
    sig = SigmoidLoss()
    assert sig.log_temperature.item() == pytest.approx(math.log(10.0))
    assert sig.bias.item() == pytest.approx(-10.0)
    assert InfoNCELoss().logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    names = dict(RetrievalLoss("sigmoid", dual=True).named_parameters())
    assert set(names) == {"losses.frame.log_temperature", "losses.frame.bias",
                          "losses.video.log_temperature", "losses.video.bias"}
    names = dict(RetrievalLoss("sigmoid", dual=False, init_log_temperature=0.5, init_bias=-3.0).named_parameters())
    assert set(names) == {"losses.sum.log_temperature", "losses.sum.bias"}
    assert names["losses.sum.log_temperature"].item() == 0.5 and names["losses.sum.bias"].item() == -3.0
    names = dict(RetrievalLoss("softmax", dual=True, init_logit_scale=4.6).named_parameters())
    assert set(names) == {"losses.frame.logit_scale", "losses.video.logit_scale"}
    assert names["losses.frame.logit_scale"].item() == pytest.approx(4.6)
    with pytest.raises(ValueError):
        RetrievalLoss("hinge")


def test_retrieval_loss_dual_vs_single_sigmoid():
    b, n, off = 3, 6, 3
    sf, sv = rand_scores(b, n, seed=6), rand_scores(b, n, seed=7)
    dual = RetrievalLoss("sigmoid", dual=True).double()
    with torch.no_grad():  # give each branch its own parameters
        dual.losses["frame"].log_temperature.fill_(0.5)
        dual.losses["frame"].bias.fill_(-1.0)
        dual.losses["video"].log_temperature.fill_(1.5)
        dual.losses["video"].bias.fill_(-4.0)
    total, logs = dual({"frame": sf, "video": sv}, row_offset=off)
    lf = sigmoid_reference(sf, 0.5, -1.0, off)
    lv = sigmoid_reference(sv, 1.5, -4.0, off)
    assert total.item() == pytest.approx(lf + lv, rel=1e-12)
    assert logs["loss_frame"].item() == pytest.approx(lf, rel=1e-12)
    assert logs["loss_video"].item() == pytest.approx(lv, rel=1e-12)
    assert logs["temperature_frame"].item() == pytest.approx(math.exp(0.5))
    assert logs["bias_video"].item() == pytest.approx(-4.0)
    assert not any(v.requires_grad for v in logs.values())

    single = RetrievalLoss("sigmoid", dual=False).double()
    total, logs = single({"frame": sf, "video": sv}, row_offset=off)
    t0 = single.losses["sum"].log_temperature.item()  # log 10 rounded to float32 at construction
    assert t0 == pytest.approx(math.log(10.0)) and single.losses["sum"].bias.item() == -10.0
    assert total.item() == pytest.approx(sigmoid_reference(sf + sv, t0, -10.0, off), rel=1e-12)
    assert set(logs) == {"loss_sum", "temperature_sum", "bias_sum"}

    only_frame = RetrievalLoss("sigmoid", dual=True, branches=("frame",)).double()
    total, logs = only_frame({"frame": sf, "video": sv}, row_offset=off)  # unused branches ignored
    assert total.item() == pytest.approx(sigmoid_reference(sf, t0, -10.0, off), rel=1e-12)
    with pytest.raises(KeyError):
        dual({"frame": sf}, row_offset=off)


def test_retrieval_loss_gradients_reach_each_branch_parameters():
    sf = rand_scores(4, 4, seed=8).float().requires_grad_()
    sv = rand_scores(4, 4, seed=9).float().requires_grad_()
    loss_fn = RetrievalLoss("sigmoid", dual=True)
    total, _ = loss_fn({"frame": sf, "video": sv})
    total.backward()
    for p in loss_fn.parameters():
        assert p.grad is not None and p.grad.abs() > 0
    assert sf.grad.abs().sum() > 0 and sv.grad.abs().sum() > 0


def test_retrieval_loss_softmax_dual_and_single():
    b, n, off = 2, 6, 2
    sf, sv = rand_scores(b, n, seed=10), rand_scores(b, n, seed=11)
    sf_v2t, sv_v2t = rand_scores(b, n, seed=12), rand_scores(b, n, seed=13)
    dual = RetrievalLoss("softmax", dual=True).double()
    with torch.no_grad():
        dual.losses["frame"].logit_scale.fill_(math.log(20.0))
        dual.losses["video"].logit_scale.fill_(math.log(50.0))
    total, logs = dual({"frame": sf, "video": sv}, row_offset=off, scores_v2t={"frame": sf_v2t, "video": sv_v2t})
    lf = 0.5 * (infonce_reference(sf, 20.0, off) + infonce_reference(sf_v2t, 20.0, off))
    lv = 0.5 * (infonce_reference(sv, 50.0, off) + infonce_reference(sv_v2t, 50.0, off))
    assert total.item() == pytest.approx(lf + lv, rel=1e-12)
    assert logs["logit_scale_video"].item() == pytest.approx(50.0)

    single = RetrievalLoss("softmax", dual=False).double()
    with torch.no_grad():
        single.losses["sum"].logit_scale.fill_(math.log(20.0))
    total, _ = single({"frame": sf, "video": sv}, row_offset=off, scores_v2t={"frame": sf_v2t, "video": sv_v2t})
    expected = 0.5 * (infonce_reference(sf + sv, 20.0, off) + infonce_reference(sf_v2t + sv_v2t, 20.0, off))
    assert total.item() == pytest.approx(expected, rel=1e-12)

    # One process (square matrix, no offset): v2t defaults to the transpose.
    sq = rand_scores(4, 4, seed=14)
    one = RetrievalLoss("softmax", dual=True, branches=("frame",)).double()
    total, _ = one({"frame": sq})
    scale = math.exp(one.losses["frame"].logit_scale.item())
    assert total.item() == pytest.approx(0.5 * (infonce_reference(sq, scale) + infonce_reference(sq.t(), scale)),
                                         rel=1e-12)


def test_low_precision_scores_are_scored_in_float32():
    s = rand_scores(3, 3, seed=15).to(torch.bfloat16)
    total, _ = RetrievalLoss("sigmoid")({"frame": s, "video": s})
    assert total.dtype == torch.float32
