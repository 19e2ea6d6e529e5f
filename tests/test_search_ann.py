"""Approximate search (tvr.search.ann): each stage against a naive reference, and recall against
exhaustive MeanMaxSim on a small clustered corpus."""
import faiss
import numpy as np
import pytest
import torch

from tvr.models.similarity import mean_max_sim
from tvr.search import ann
from tvr.search.synthetic import CorpusSpec, SyntheticCorpus

SPEC = CorpusSpec(dim=64, frames=6, expansion=2, query_tokens=16, topics=16, concepts=256, seed=3)
N_VIDEOS = 2000


@pytest.fixture(scope="module")
def corpus():
    c = SyntheticCorpus(SPEC)
    frames, frame_mask, video, video_mask = c.videos(0, N_VIDEOS)
    f16, v16 = frames.astype(np.float16), video.astype(np.float16)  # stored like the index stores them
    return c, f16, frame_mask, v16, video_mask


@pytest.fixture(scope="module", params=["flat", "two_level"])
def built(corpus, request):
    """256 centroids from flat k-means, or (the path large corpora take) 512 in 16 groups."""
    _, f, fm, v, vm = corpus
    sample = np.concatenate([f[fm], v[vm]]).astype(np.float32)
    nlist = 256 if request.param == "flat" else 512
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ann, "TWO_LEVEL_FROM", 512)
        quant = ann.train_quantizer(sample[ann.sample_rows(len(sample), 10000, 0)],
                                    ann.AnnBuildConfig(nlist=nlist, pq_m=16, kmeans_iters=8), total_tokens=len(sample))
    assert (quant.group_of is not None) == (request.param == "two_level")
    half = N_VIDEOS // 2
    parts = [ann.encode_videos(quant, np.arange(a, b), [(f[a:b], fm[a:b]), (v[a:b], vm[a:b])])
             for a, b in ((0, half), (half, N_VIDEOS))]
    return quant, parts, ann.AnnIndex(quant, parts, [SPEC.frames, SPEC.frames + SPEC.expansion])


def fetch_for(f, fm, v, vm):
    def fetch(vids):
        return [ann.TokenBatch(torch.from_numpy(f[vids]).float(), torch.from_numpy(fm[vids])),
                ann.TokenBatch(torch.from_numpy(v[vids]).float(), torch.from_numpy(vm[vids]))]
    return fetch


def test_pq_codes_equal_faiss(built, corpus):
    quant = built[0]
    x = corpus[1][:50][corpus[2][:50]].astype(np.float32)
    lists = quant.assign(x)
    pq = faiss.ProductQuantizer(quant.dim, quant.m, int(np.log2(quant.ksub)))
    faiss.copy_array_to_vector(quant.codebook.ravel(), pq.centroids)
    expected = pq.compute_codes(np.ascontiguousarray(x - quant.centroids[lists]))
    np.testing.assert_array_equal(quant.encode(x, lists), expected)
    # and the centroid is faiss's exact nearest centroid (with groups: the nearest in the probed groups)
    flat = faiss.IndexFlatL2(quant.dim)
    flat.add(quant.centroids)
    nearest = flat.search(x, 1)[1][:, 0]
    if quant.group_of is None:
        np.testing.assert_array_equal(lists, nearest)
    else:
        group_dist = ((x[:, None, :] - quant.group_centroids[None]) ** 2).sum(-1)  # n x G
        probed = np.argsort(group_dist, axis=1)[:, :ann.ASSIGN_PROBE]
        dist = ((x[:, None, :] - quant.centroids[None]) ** 2).sum(-1)  # n x nlist
        for i in range(len(x)):
            allowed = np.isin(quant.group_of, probed[i])
            assert lists[i] == np.flatnonzero(allowed)[np.argmin(dist[i, allowed])]
        assert np.mean(lists == nearest) >= 0.9  # the groups rarely hide the nearest centroid


def naive_branch_mms(q, token_sets):
    """Sum over branches of the mean over query tokens of the best dot product; loops, float64."""
    total = 0.0
    for tokens in token_sets:
        if not len(tokens):
            continue
        total += np.mean([max(float(np.dot(qi, t)) for t in tokens) for qi in q])
    return total


def test_stage_scores_match_naive(built):
    quant, _, index = built
    rng = np.random.default_rng(0)
    q = torch.nn.functional.normalize(torch.randn(5, quant.dim), dim=-1)
    rows = rng.choice(len(index), 7, replace=False)
    cent_sim = q @ torch.from_numpy(quant.centroids).t()
    table = index._centroid_table(cent_sim)
    got_c = index._centroid_scores(table, rows).numpy()
    got_pq = index._pq_scores(q, table, rows).numpy()
    # the cache-sized chunks are an implementation detail: tiny chunks give the same scores
    np.testing.assert_allclose(index._centroid_scores(table, rows, videos_per_chunk=3).numpy(), got_c, atol=1e-6)
    np.testing.assert_allclose(index._pq_scores(q, table, rows, videos_per_chunk=2).numpy(), got_pq, atol=1e-6)
    qn = q.double().numpy()
    cb = quant.codebook.astype(np.float64)
    for i, r in enumerate(rows):
        lists, codes = index.lists[r], index.codes[r]
        cents, decoded = [], []
        for slot in range(len(lists)):
            if lists[slot] < 0:
                cents.append(None)
                decoded.append(None)
                continue
            c = quant.centroids[lists[slot]].astype(np.float64)
            residual = np.concatenate([cb[j, codes[slot, j]] for j in range(quant.m)])
            cents.append(c)
            decoded.append(c + residual)
        split = [slice(0, SPEC.frames), slice(SPEC.frames, None)]
        exp_c = naive_branch_mms(qn, [[t for t in cents[s] if t is not None] for s in split])
        exp_pq = naive_branch_mms(qn, [[t for t in decoded[s] if t is not None] for s in split])
        assert got_c[i] == pytest.approx(exp_c, abs=1e-5)
        assert got_pq[i] == pytest.approx(exp_pq, abs=1e-5)


def test_probe_reaches_exactly_the_videos_in_probed_lists(built):
    quant, _, index = built
    q = torch.nn.functional.normalize(torch.randn(4, quant.dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    cent_sim = q @ torch.from_numpy(quant.centroids).t()
    rows, _ = index._probe(cent_sim, nprobe=3)
    probed = set(cent_sim.topk(3, dim=1).indices.flatten().tolist())
    expected = {r for r in range(len(index)) if probed & set(index.lists[r][index.lists[r] >= 0].tolist())}
    assert set(rows.tolist()) == expected


def test_parts_search_as_one(built, corpus):
    quant, parts, index = built
    _, f, fm, v, vm = corpus
    one = ann.AnnIndex(quant, [ann.CodedVideos(*[np.concatenate([p[i] for p in parts]) for i in range(3)])],
                       [SPEC.frames, SPEC.frames + SPEC.expansion])
    q = torch.from_numpy(corpus[0].queries(np.array([5, 2500])))
    mask = torch.ones(q.shape[1], dtype=torch.bool)
    cfg = ann.AnnSearchConfig(nprobe=4, centroid_candidates=300, pq_candidates=100, rerank=30)
    for i in range(2):
        a = index.search(fetch_for(f, fm, v, vm), q[i], mask, 10, cfg)
        b = one.search(fetch_for(f, fm, v, vm), q[i], mask, 10, cfg)
        np.testing.assert_array_equal(a.vids, b.vids)


def test_recall_against_exhaustive(built, corpus):
    """recall@10 of the approximate search vs exhaustive MeanMaxSim; returned scores are exact."""
    _, _, index = built
    c, f, fm, v, vm = corpus
    targets = np.random.default_rng(7).choice(N_VIDEOS, 20, replace=False)
    q = torch.from_numpy(c.queries(targets))
    q_mask = torch.ones(q.shape[:2], dtype=torch.bool)
    exact = sum(mean_max_sim(q, q_mask, torch.from_numpy(t).float(), torch.from_numpy(m))
                for t, m in ((f, fm), (v, vm)))  # Nq x N
    cfg = ann.AnnSearchConfig(nprobe=8, centroid_candidates=1024, pq_candidates=512, rerank=128)
    fetched, announced = [], []

    def fetch(vids):
        assert len(announced) == 1  # announced once, before the first fetch
        fetched.append(np.array(vids))
        return fetch_for(f, fm, v, vm)(vids)

    recalls, candidates = [], []
    for i in range(len(q)):
        fetched.clear()
        announced.clear()
        res = index.search(fetch, q[i], q_mask[i], 10, cfg, prefetch=lambda vids: announced.append(np.array(vids)))
        assert len(announced) == 1 and np.array_equal(np.sort(announced[0]), np.sort(np.concatenate(fetched)))
        truth = set(exact[i].topk(10).indices.tolist())
        recalls.append(len(truth & set(res.vids.tolist())) / 10)
        candidates.append(res.num_candidates)
        np.testing.assert_allclose(res.scores, exact[i, res.vids].numpy(), atol=1e-5)
    assert np.mean(recalls) >= 0.9
    assert np.median(candidates) < N_VIDEOS  # it did not just score everything


def test_quantizer_survives_the_index_file(built, corpus, tmp_path):
    """What update_ann writes, load_quantizer reads back: the same centroids, groups and codes."""
    from tvr.search.ann_store import ANN_DIR, QUANTIZER, load_quantizer
    from tvr.search.store import SearchIndexError, write_shard

    quant = built[0]
    (tmp_path / ANN_DIR).mkdir()
    write_shard(str(tmp_path / ANN_DIR / QUANTIZER), quant.arrays(), {"checkpoint_sha256": "abc"})
    loaded = load_quantizer(str(tmp_path), "abc")
    assert loaded.arrays().keys() == quant.arrays().keys()
    for name, array in quant.arrays().items():
        np.testing.assert_array_equal(loaded.arrays()[name], array)
    x = corpus[1][:200][corpus[2][:200]].astype(np.float32)
    np.testing.assert_array_equal(loaded.assign(x), quant.assign(x))
    np.testing.assert_array_equal(loaded.encode(x, quant.assign(x)), quant.encode(x, quant.assign(x)))
    # arrays that do not fit together are refused with the file's name
    broken = dict(quant.arrays(), codebook=quant.codebook[:, :, :-1])
    write_shard(str(tmp_path / ANN_DIR / QUANTIZER), broken, {"checkpoint_sha256": "abc"})
    with pytest.raises(SearchIndexError, match=QUANTIZER):
        load_quantizer(str(tmp_path), "abc")


def test_two_level_shares():
    """Centroids per group: in proportion to the points, one at least, exactly the total."""
    # 4,033 points in one group and 63 singletons, 2,048 centroids: the proportional floors give
    # 2,016 + 63 x 0, the minimum of one lifts that to 2,079, so 31 come off the big group.
    share = ann._shares(np.array([4033] + [1] * 63 + [0]), 2048)
    np.testing.assert_array_equal(share, [2048 - 63] + [1] * 63 + [0])
    # the rounding leaves centroids over: they go where points per centroid are highest
    np.testing.assert_array_equal(ann._shares(np.array([10, 10, 5]), 4), [2, 1, 1])
    np.testing.assert_array_equal(ann._shares(np.array([3, 3, 3]), 9), [3, 3, 3])
