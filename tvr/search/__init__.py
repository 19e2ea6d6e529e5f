"""Search your own videos with a trained Video-ColBERT model.

    python -m tvr.search index --checkpoint CK --videos DIR --out INDEX [--ann]
    python -m tvr.search query --index INDEX "a red circle moves left" [--explain OUT.png]

Modules: videos (find and load videos as training does), store (the index on disk), index
(building and updating it), query (exhaustive and approximate search), explain (the picture of a
match), ann / ann_store (IVF-PQ candidate generation), synthetic (a clustered token corpus for
benchmarks and tests), model_ref (which checkpoint an index belongs to).
"""
