"""The diversity map: how varied the rows are, as a 2-D map of topics, topic clusters and warnings.

Rows that all say nearly the same thing teach one narrow pattern; one topic holding most rows
means the model rarely sees the others. Used by the quality report (nbkit.data.quality) and by
splitting (nbkit.data.split).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

import numpy as np

TIGHT_SIMILARITY = 0.35  # mean pairwise word-overlap similarity above this: the rows say nearly the same thing
LOPSIDED_SHARE = 0.6  # one topic cluster holding more than this share of rows
FIT_SAMPLE = 20_000


def _vectorize(texts: list[str], vectorizer_class: Any, **options: Any):
    """(matrix, terms) without English stop words; with them where nothing else is left; (None, None) if empty."""
    for extra in ({"stop_words": "english"}, {"max_df": 1.0}):
        try:
            vectorizer = vectorizer_class(**{**options, **extra})
            matrix = vectorizer.fit_transform(texts)
            return matrix, vectorizer.get_feature_names_out()
        except ValueError:  # "empty vocabulary" (or max_df pruned every term)
            continue
    return None, None


def auto_clusters(n: int) -> int:
    return min(8, max(2, round(math.sqrt(n / 20))))


def diversity_map(texts: list[str], n_clusters: int = 0, seed: int = 0) -> dict[str, Any]:
    """A 2-D map of the texts by topic, topic clusters, and plain-language warnings.

    TF-IDF vectors -> TruncatedSVD (LSA) -> unit length; KMeans groups the rows in that
    space and the first two components, scaled to [-1, 1], are the map's coordinates.
    `mean_similarity` is the exact mean pairwise cosine similarity of the rows' word counts
    (stop words left out, no IDF weighting: IDF would play down exactly the words all rows share);
    0 = no two rows share a word, 1 = every row says the same thing.
    """
    n = len(texts)
    out: dict[str, Any] = {
        "n": n,
        "x": [0.0] * n,
        "y": [0.0] * n,
        "cluster": [0] * n,
        "cluster_sizes": {"0": n} if n else {},
        "top_terms": {},
        "n_clusters": 1 if n else 0,
        "mean_similarity": None,
        "largest_cluster_share": 1.0 if n else 0.0,
        "warnings": [],
    }
    if n < 3:
        out["warnings"].append(f"Only {n} row{'s' if n != 1 else ''}: too few to judge how varied the data is.")
        return out
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    matrix, terms = _vectorize(texts, TfidfVectorizer, sublinear_tf=True, max_features=20000, max_df=0.95)
    counts, _ = _vectorize(texts, TfidfVectorizer, sublinear_tf=True, use_idf=False)
    if matrix is None or counts is None:
        out["mean_similarity"] = 1.0
        out["warnings"].append("The rows contain no words to compare: check that the text columns were read.")
        return out
    # Mean over pairs i != j of <v_i, v_j> for unit rows: |sum v|^2 minus the diagonal, without an n x n matrix.
    total = np.asarray(counts.sum(axis=0)).ravel()
    norms = np.asarray(counts.multiply(counts).sum(axis=1)).ravel()
    mean_similarity = float((total @ total - norms.sum()) / (n * (n - 1)))
    out["mean_similarity"] = round(mean_similarity, 4)

    # The SVD and k-means are fitted on a sample (the whole data below FIT_SAMPLE rows) and
    # applied to every row: the topics of 100,000 rows are clear from 20,000.
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, FIT_SAMPLE, replace=False)) if n > FIT_SAMPLE else np.arange(n)
    components = min(50, matrix.shape[1] - 1, len(sample) - 1)
    if components >= 2:
        svd = TruncatedSVD(n_components=components, random_state=seed).fit(matrix[sample])
        lsa = svd.transform(matrix)
    else:
        lsa = matrix.toarray()
    lsa = normalize(lsa)
    coords = lsa[:, :2] if lsa.shape[1] >= 2 else np.column_stack([lsa[:, 0], np.zeros(n)])
    coords = coords - coords.mean(axis=0)
    scale = np.abs(coords).max(axis=0)
    coords = coords / np.where(scale > 0, scale, 1.0)

    distinct = len(np.unique(lsa.round(6), axis=0))
    k = max(1, min(n_clusters or auto_clusters(n), distinct))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if k > 1:
            labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(lsa[sample]).predict(lsa)
        else:
            labels = np.zeros(n, dtype=int)
    sizes = Counter(labels.tolist())
    dense = matrix.tocsr()
    top_terms = {}
    for c in sorted(sizes):
        centroid = np.asarray(dense[labels == c].mean(axis=0)).ravel()
        top_terms[str(c)] = [str(terms[i]) for i in np.argsort(-centroid)[:6] if centroid[i] > 0]
    largest = max(sizes.values()) / n

    out.update(
        x=coords[:, 0].round(4).tolist(),
        y=coords[:, 1].round(4).tolist(),
        cluster=labels.tolist(),
        cluster_sizes={str(c): sizes[c] for c in sorted(sizes)},
        top_terms=top_terms,
        n_clusters=len(sizes),
        largest_cluster_share=round(largest, 4),
    )
    if mean_similarity > TIGHT_SIMILARITY or distinct == 1:
        out["warnings"].append(
            f"The rows are very alike (mean similarity {mean_similarity:.2f}): the model will learn one narrow "
            "pattern. Add examples that word requests differently and cover more cases."
        )
    if len(sizes) > 1 and largest > LOPSIDED_SHARE:
        c = max(sizes, key=sizes.get)
        out["warnings"].append(
            f"One topic dominates: {largest:.0%} of rows fall in the cluster about "
            f"'{', '.join(top_terms[str(c)][:3])}'. The model will see the other topics rarely; add examples of them."
        )
    return out
