"""Near-duplicate search: the text a row is compared by, MinHash signatures and an LSH index.

Repeated rows get extra weight in training and leak from train into test, and most of them are
rewordings, not exact copies. Rows are compared by their word 3-gram shingles: MinHash estimates
the share of shingles two rows have in common (Jaccard similarity) and an LSH index (datasketch)
finds the candidate pairs without comparing every row with every other.

The signatures are the ones datasketch's `MinHash.update_batch` computes (same permutations, same
"affine32" scheme), built for all rows at once with numpy instead of one object per row:
that is what keeps 100,000 rows within seconds on a laptop CPU.

Used by the quality report (nbkit.data.quality), formatting (drop_near_duplicates) and splitting
(leakage between splits); `validate_threshold` checks the `near_duplicate_threshold` setting
all three stages' configs share.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from nbkit.core.config import Config

# -- rows ---------------------------------------------------------------------------------


def row_text(row: dict[str, Any]) -> str:
    """The text compared for duplicates: every non-system message, joined with newlines.

    The system prompt is left out because it is usually the same in every row, and would
    make all rows look alike.
    """
    return "\n".join(m["content"] for m in row["messages"] if m["role"] != "system")


_WORD = re.compile(r"\w+")


def normalize_text(text: str) -> str:
    """Lower case words only: two texts that differ in case, punctuation or spacing compare equal."""
    return " ".join(_WORD.findall(text.lower()))


def shingles(text: str) -> list[str]:
    """Word 3-grams ("a b c"), lower-cased and punctuation-insensitive; the words for texts under 3 words."""
    words = _WORD.findall(text.lower()) or [""]
    if len(words) < 3:
        return words
    return [" ".join(words[i : i + 3]) for i in range(len(words) - 2)]


# -- MinHash signatures --------------------------------------------------------------------
#
# A shingle's 32-bit hash combines the SHA-1 hashes of its words (each word is hashed once per
# call, not once per shingle). `shingle_hash` is the scalar version of the same function, so a
# test can check the bulk signatures against datasketch's own MinHash.

_U32 = np.uint64(0xFFFFFFFF)
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
SCHEME = "affine32"  # datasketch >= 2.0's default permutation scheme
# LSH bands tuned for recall: candidates are confirmed with the signatures afterwards, so a
# false positive costs a comparison while a false negative is a duplicate nobody sees.
LSH_WEIGHTS = (0.1, 0.9)
BIG_BUCKET = 300  # buckets larger than this are compared leader-by-leader, not all pairs


def _word_hash(word: str) -> int:
    from datasketch.hashfunc import sha1_hash32

    return sha1_hash32(word.encode("utf-8"))


def _mix64_int(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK64
    return x ^ (x >> 33)


def shingle_hash(shingle: str) -> int:
    """32-bit hash of one shingle (scalar reference for the vectorized version in `minhash_signatures`)."""
    words = shingle.split(" ")
    if len(words) != 3:
        return _word_hash(shingle)
    h1, h2, h3 = (_word_hash(w) for w in words)
    return _mix64_int(((h1 << 32) | h2) ^ ((h3 * _GOLDEN) & _MASK64)) & 0xFFFFFFFF


def _mix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before its affine permutations."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _shingle_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All shingle hashes of all texts in one array, and where each text's shingles start."""
    cache: dict[str, int] = {}
    per_text: list[list[int]] = []
    for text in texts:
        hashes = []
        for word in _WORD.findall(text.lower()) or [""]:
            value = cache.get(word)
            if value is None:
                value = cache[word] = _word_hash(word)
            hashes.append(value)
        per_text.append(hashes)
    n_words = np.fromiter((len(h) for h in per_text), dtype=np.int64, count=len(per_text))
    words = np.fromiter(itertools.chain.from_iterable(per_text), dtype=np.uint64, count=int(n_words.sum()))
    word_start = np.concatenate([[0], np.cumsum(n_words)])
    n_shingles = np.where(n_words >= 3, n_words - 2, n_words)
    starts = np.concatenate([[0], np.cumsum(n_shingles)])
    owner = np.repeat(np.arange(len(per_text)), n_shingles)
    first = np.arange(int(starts[-1])) - starts[owner] + word_start[owner]  # first word of each shingle
    last = len(words) - 1
    second, third = np.minimum(first + 1, last), np.minimum(first + 2, last)
    trigram = _mix64(((words[first] << np.uint64(32)) | words[second]) ^ (words[third] * np.uint64(_GOLDEN)))
    hashes = np.where(n_words[owner] >= 3, trigram & _U32, words[first]).astype(np.uint32)
    return hashes, starts


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from datasketch import MinHash

    template = MinHash(num_perm=num_perm, seed=seed)
    if getattr(template, "scheme", None) != SCHEME:
        raise ImportError("nbkit.data.near_duplicates needs datasketch >= 2.0 — run `pip install -U 'datasketch>=2'`.")
    a, b = template.permutations
    return a, b


def minhash_signatures(texts: Sequence[str], num_perm: int = 64, seed: int = 1) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures of the texts' shingle sets.

    Row i equals `MinHash(num_perm, seed=seed, hashfunc=shingle_hash)` updated with
    `shingles(texts[i])` — computed for all rows at once.
    """
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    if not len(texts):
        return out
    hashes, starts = _shingle_hashes(texts)
    a, b = _permutations(num_perm, seed)
    mixed = _fmix32(hashes)
    budget = max(1, 4_000_000 // num_perm)  # shingles per chunk: ~16 MB of permuted values
    i, n = 0, len(texts)
    while i < n:
        j = int(np.searchsorted(starts, starts[i] + budget, side="right")) - 1
        j = min(max(j, i + 1), n)
        # (num_perm, shingles) layout: outer product and reduceat along the last axis are the fast ones.
        permuted = np.multiply.outer(a, mixed[starts[i] : starts[j]])
        permuted += b[:, None]
        out[i:j] = np.minimum.reduceat(permuted, starts[i:j] - starts[i], axis=1).T
        i = j
    return out


# -- near-duplicates -----------------------------------------------------------------------


def _check_params(threshold: float, num_perm: int) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"`threshold` must be in (0, 1], got {threshold}")
    if num_perm < 8:
        raise ValueError(f"`num_perm` must be >= 8, got {num_perm}")


def validate_threshold(config: Config, name: str) -> None:
    value = getattr(config, name)
    config.require(
        0.5 <= value <= 1.0,
        name,
        f"must be between 0.5 and 1.0, got {value}",
        "0.8 catches rewordings, 1.0 only exact copies; set it in the parameters cell",
    )


def _lsh_index(signatures: np.ndarray, threshold: float, num_perm: int, seed: int):
    """A datasketch MinHashLSH holding row k of `signatures` under key k."""
    from datasketch import LeanMinHash, MinHashLSH

    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    except ValueError:
        # Very high thresholds: datasketch's optimizer wants a single band. With b bands, a pair
        # estimated >= threshold differs in at most (1 - threshold) * num_perm values, so b above
        # that guarantees one identical band, i.e. the pair is always a candidate.
        bands = max(2, min(num_perm // 2, int((1 - threshold) * num_perm) + 1))
        lsh = MinHashLSH(num_perm=num_perm, params=(bands, num_perm // bands))
    with lsh.insertion_session() as session:
        for key, values in enumerate(signatures):
            session.insert(key, LeanMinHash(seed=seed, hashvalues=values, scheme=SCHEME), check_duplication=False)
    return lsh


def _similarity(sig_a: np.ndarray, sig_b: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of pairs (sig_a[a[k]], sig_b[b[k]]): the share of equal MinHash values."""
    out = np.empty(len(a), dtype=np.float64)
    step = 200_000
    for s in range(0, len(a), step):
        out[s : s + step] = (sig_a[a[s : s + step]] == sig_b[b[s : s + step]]).mean(axis=1)
    return out


def _bucket_pairs(groups: Iterable[tuple[int, ...]], sig: np.ndarray, threshold: float) -> np.ndarray:
    """Confirmed (a, b) pairs, a < b, from LSH buckets.

    Small buckets give all their pairs; a huge bucket (many rows sharing a band) is resolved
    leader by leader, so the work stays linear-ish instead of quadratic.
    """
    first: list[int] = []
    second: list[int] = []
    confirmed: list[np.ndarray] = []
    for group in groups:
        if len(group) <= BIG_BUCKET:
            for x, y in itertools.combinations(group, 2):
                first.append(x)
                second.append(y)
            continue
        rest = np.asarray(group, dtype=np.int64)
        while len(rest) > 1:
            leader, others = rest[0], rest[1:]
            close = (sig[others] == sig[leader]).mean(axis=1) >= threshold
            confirmed.append(np.stack([np.full(int(close.sum()), leader), others[close]], axis=1))
            rest = others[~close]
    if first:
        pairs = np.unique(
            np.stack([np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)], axis=1), axis=0
        )
        keep = _similarity(sig, sig, pairs[:, 0], pairs[:, 1]) >= threshold
        confirmed.append(pairs[keep])
    return np.concatenate(confirmed) if confirmed else np.empty((0, 2), dtype=np.int64)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)


def _members(inverse: np.ndarray) -> list[np.ndarray]:
    """For each unique id, the (sorted) original rows that map to it."""
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def near_duplicate_clusters(
    texts: list[str], threshold: float = 0.8, num_perm: int = 64, seed: int = 1
) -> list[list[int]]:
    """Groups of rows (size >= 2) whose estimated Jaccard similarity of shingles is >= threshold.

    Indices are sorted inside each group and groups are sorted by their first index. Exact
    copies (after lower-casing and dropping punctuation) always land in the same group.
    Groups are connected components: A~B and B~C put A, B and C together.
    """
    _check_params(threshold, num_perm)
    if len(texts) < 2:
        return []
    sig = minhash_signatures(texts, num_perm, seed)
    unique, inverse = np.unique(sig, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    finder = _UnionFind(len(unique))
    if len(unique) > 1:
        lsh = _lsh_index(unique, threshold, num_perm, seed)
        groups = set()
        for table in lsh.hashtables:
            for bucket in table.keys():
                members = table.get(bucket)
                if len(members) > 1:
                    groups.add(tuple(sorted(members)))
        for x, y in _bucket_pairs(groups, unique, threshold).tolist():
            finder.union(x, y)
    roots = np.fromiter((finder.find(k) for k in range(len(unique))), dtype=np.int64, count=len(unique))
    clusters = [rows.tolist() for rows in _members(roots[inverse]) if len(rows) > 1]
    return sorted(clusters, key=lambda c: c[0])


def cross_near_duplicates(
    query: list[str], reference: list[str], threshold: float = 0.8, num_perm: int = 64, seed: int = 1
) -> list[tuple[int, int]]:
    """Pairs (i, j): query[i] is a near-duplicate of reference[j] (estimated Jaccard >= threshold).

    An LSH index is built over `reference` only, so checking a test split (query) against a
    train split (reference) costs one lookup per test row. Exact copies are always found.
    Sorted by (i, j).
    """
    _check_params(threshold, num_perm)
    if not query or not reference:
        return []
    from datasketch import LeanMinHash

    ref_unique, ref_inverse = np.unique(minhash_signatures(reference, num_perm, seed), axis=0, return_inverse=True)
    q_unique, q_inverse = np.unique(minhash_signatures(query, num_perm, seed), axis=0, return_inverse=True)
    lsh = _lsh_index(ref_unique, threshold, num_perm, seed)
    first: list[int] = []
    second: list[int] = []
    for qk, values in enumerate(q_unique):
        for rk in lsh.query(LeanMinHash(seed=seed, hashvalues=values, scheme=SCHEME)):
            first.append(qk)
            second.append(rk)
    if not first:
        return []
    a, b = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    keep = _similarity(q_unique, ref_unique, a, b) >= threshold
    q_rows, ref_rows = _members(q_inverse.reshape(-1)), _members(ref_inverse.reshape(-1))
    pairs = [
        (i, j)
        for qk, rk in zip(a[keep].tolist(), b[keep].tolist())
        for i in q_rows[qk].tolist()
        for j in ref_rows[rk].tolist()
    ]
    return sorted(pairs)
