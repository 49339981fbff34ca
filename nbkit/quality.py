"""Data quality report, between collect and split: duplicates, personal data, lengths, balance, diversity.

Bad training data is the most common reason a fine-tune disappoints, and most problems are
invisible when scrolling through a few rows. This module measures them and turns the numbers
into a short verdict that says what to fix and which parameter fixes it.

Headless: no ipywidgets, IPython or plotly here (the figures live in nbkit.widgets.quality).

Near-duplicates use MinHash over word 3-gram shingles and an LSH index (datasketch). The
signatures are the ones datasketch's `MinHash.update_batch` computes (same permutations, same
"affine32" scheme), built for all rows at once with numpy instead of one object per row:
that is what keeps 100,000 rows within seconds on a laptop CPU.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from nbkit.config import Config, field
from nbkit.replay import DEFAULT_SHARE
from nbkit.workspace import Workspace, provenance, read_jsonl, write_json

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
    return [" ".join(words[i:i + 3]) for i in range(len(words) - 2)]


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
        raise ImportError("nbkit.quality needs datasketch >= 2.0 — run `pip install -U 'datasketch>=2'`.")
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
        permuted = np.multiply.outer(a, mixed[starts[i]:starts[j]])
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
        out[s:s + step] = (sig_a[a[s:s + step]] == sig_b[b[s:s + step]]).mean(axis=1)
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
        pairs = np.unique(np.stack([np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)], axis=1),
                          axis=0)
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


def near_duplicate_clusters(texts: list[str], threshold: float = 0.8, num_perm: int = 64,
                            seed: int = 1) -> list[list[int]]:
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


def cross_near_duplicates(query: list[str], reference: list[str], threshold: float = 0.8, num_perm: int = 64,
                          seed: int = 1) -> list[tuple[int, int]]:
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
    pairs = [(i, j) for qk, rk in zip(a[keep].tolist(), b[keep].tolist())
             for i in q_rows[qk].tolist() for j in ref_rows[rk].tolist()]
    return sorted(pairs)


# -- personal data and secrets -------------------------------------------------------------

PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "ip": "[IP]", "api_key": "[API_KEY]"}
PII_KINDS = tuple(PLACEHOLDERS)

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_API_KEYS = [
    re.compile(r"(?<![\w-])sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}"),  # OpenAI / Anthropic style
    re.compile(r"(?<!\w)[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"),  # Stripe
    re.compile(r"(?<!\w)gh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
    re.compile(r"(?<!\w)github_pat_[A-Za-z0-9_]{40,}"),
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),  # AWS access key id
    re.compile(r"(?<!\w)xox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack
    re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}"),  # Google API key
]
# A long random-looking value after key=, token=, secret: ... or "Bearer": only the value is matched.
_ASSIGNED_SECRET = re.compile(
    r"(?i)(?:\b(?:api[_-]?key|apikey|access[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|(?:access[_-]?|auth[_-]?)?token"
    r"|password|passwd|pwd|key)\s*[:=]\s*[\"']?|\bbearer\s+)([A-Za-z0-9_\-+/=.]{16,})")
_CARD = re.compile(r"(?<![\w+.,-])\d(?:[ -]?\d){12,18}(?![\w-]|[.,]\d)")
_IP = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                 r"(?![\w-]|\.\d)")
# Digits right after "order", "invoice #", "tracking no." ... are reference numbers, not cards or phones.
_REFERENCE_BEFORE = re.compile(r"(?i)(?:\border|\binvoice|\btracking|\breference|\bref|\bticket|\bcase|\bisbn|#)"
                               r"\s*(?:no\.?|number|id)?\s*[:#]?\s*$")
_VERSION_BEFORE = re.compile(r"(?i)(?:\bversion|\bver\.?|\bv|\bbuild|\brelease|\bfirmware|\bkernel)\s*[:#]?\s*$")
_PHONES = [
    # international: +CC then 2-5 groups, 8-15 digits in all
    re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w-]|[.,]\d)"),
    # North American: (415) 555-2671, 415-555-2671, 415.555.2671, 415 555 2671
    re.compile(r"(?<![\w#$€£.,/-])(?:\(\d{3}\)\s?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-]|[.,]\d)"),
    # national numbers with a trunk 0: 030 1234 5678, 07700 900123, 020-7946-0958
    re.compile(r"(?<![\w#$€£.,/-])0\d{2,4}[ /-]\d{3,4}[ -]?\d{3,4}(?![\w-]|[.,]\d)"),
    # digits right after a phone word: "phone: 5551234567", "tel 0301234567"
    re.compile(r"(?i)\b(?:phone|tel|telephone|mobile|cell|whatsapp)(?:\s*(?:number|no\.?|#))?\s*(?:is\s*)?[:.]?\s*"
               r"(\+?\d[\d ().-]{6,18}\d)(?![\w-]|[.,]\d)"),
]


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_shape_ok(text: str) -> bool:
    """Cards are written as one run of digits or in the usual groups (4-4-4-4, Amex 4-6-5, ...)."""
    digits = re.sub(r"\D", "", text)
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1 or not _luhn_ok(digits):
        return False
    groups = re.split(r"[ -]", text)
    if len(groups) == 1:
        return True
    if len({sep for sep in re.findall(r"[ -]", text)}) > 1:
        return False
    sizes = [len(g) for g in groups]
    return sizes == [4, 6, 5] or sizes == [4, 6, 4] or (all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4)


def _mixed_enough(value: str) -> bool:
    """Secrets are random-looking: letters and digits mixed (a plain word after `key=` is no secret)."""
    return bool(re.search(r"\d", value)) and bool(re.search(r"[A-Za-z]", value)) and len(set(value)) >= 6


def _before(text: str, start: int, context: re.Pattern) -> bool:
    return bool(context.search(text[max(0, start - 24):start]))


# Cheap screens: most messages hold none of these, and skipping the full patterns keeps a
# 100,000-row report fast.
_KEY_HINT = re.compile(r"(?i)sk-|[sr]k_|gh[pousr]_|github_pat_|AKIA|ASIA|xox|AIza|key|token|secret|bearer|passw|pwd")
_MANY_DIGITS = re.compile(r"(?:\d[^\d\n]{0,4}){8}")  # 8+ digits close together: a card or phone is possible
_DOTTED_QUAD = re.compile(r"\d\.\d{1,3}\.\d")


def pii_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each personal-data match, in text order, never overlapping.

    Where two patterns claim the same characters the more specific one wins
    (API key, then email, card, IP, phone).
    """
    found: list[tuple[int, int, str]] = []
    if _KEY_HINT.search(text):
        for pattern in _API_KEYS:
            found += [(m.start(), m.end(), "api_key") for m in pattern.finditer(text)]
        found += [(m.start(1), m.end(1), "api_key") for m in _ASSIGNED_SECRET.finditer(text)
                  if _mixed_enough(m.group(1))]
    if "@" in text:
        found += [(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]
    if _DOTTED_QUAD.search(text):
        found += [(m.start(), m.end(), "ip") for m in _IP.finditer(text)
                  if not _before(text, m.start(), _VERSION_BEFORE)]
    if _MANY_DIGITS.search(text):
        found += [(m.start(), m.end(), "card") for m in _CARD.finditer(text)
                  if _card_shape_ok(m.group()) and not _before(text, m.start(), _REFERENCE_BEFORE)]
        for pattern in _PHONES:
            for m in pattern.finditer(text):
                start, end = (m.start(1), m.end(1)) if pattern.groups else (m.start(), m.end())
                if 8 <= sum(ch.isdigit() for ch in text[start:end]) <= 15 and not _before(text, start,
                                                                                           _REFERENCE_BEFORE):
                    found.append((start, end, "phone"))
    if len(found) < 2:
        return found
    priority = {kind: i for i, kind in enumerate(("api_key", "email", "card", "ip", "phone"))}
    taken: list[tuple[int, int, str]] = []
    for span in sorted(found, key=lambda s: (priority[s[2]], s[0], -(s[1] - s[0]))):
        if all(span[1] <= t[0] or span[0] >= t[1] for t in taken):
            taken.append(span)
    return sorted(taken)


def find_pii(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) for emails, phone numbers, card numbers (Luhn-checked), IPv4 addresses and API keys."""
    return [(kind, text[start:end]) for start, end, kind in pii_spans(text)]


def redact_pii(text: str) -> str:
    """The text with each match replaced by [EMAIL], [PHONE], [CARD], [IP] or [API_KEY]."""
    for start, end, kind in reversed(pii_spans(text)):
        text = text[:start] + PLACEHOLDERS[kind] + text[end:]
    return text


def mask_secret(value: str, keep: int = 4) -> str:
    """All but the last `keep` characters replaced by '*': enough to find it, not enough to use it."""
    keep = min(keep, len(value) // 3)
    return "*" * (len(value) - keep) + value[len(value) - keep:]


# -- diversity -------------------------------------------------------------------------------

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
    out: dict[str, Any] = {"n": n, "x": [0.0] * n, "y": [0.0] * n, "cluster": [0] * n,
                           "cluster_sizes": {"0": n} if n else {}, "top_terms": {}, "n_clusters": 1 if n else 0,
                           "mean_similarity": None, "largest_cluster_share": 1.0 if n else 0.0, "warnings": []}
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

    out.update(x=coords[:, 0].round(4).tolist(), y=coords[:, 1].round(4).tolist(), cluster=labels.tolist(),
               cluster_sizes={str(c): sizes[c] for c in sorted(sizes)}, top_terms=top_terms, n_clusters=len(sizes),
               largest_cluster_share=round(largest, 4))
    if mean_similarity > TIGHT_SIMILARITY or distinct == 1:
        out["warnings"].append(
            f"The rows are very alike (mean similarity {mean_similarity:.2f}): the model will learn one narrow "
            "pattern. Add examples that word requests differently and cover more cases.")
    if len(sizes) > 1 and largest > LOPSIDED_SHARE:
        c = max(sizes, key=sizes.get)
        out["warnings"].append(
            f"One topic dominates: {largest:.0%} of rows fall in the cluster about "
            f"'{', '.join(top_terms[str(c)][:3])}'. The model will see the other topics rarely; add examples of them.")
    return out


# -- the report ------------------------------------------------------------------------------


@dataclass
class QualityConfig(Config):
    """What the data quality report checks, and which fixes formatting will apply (to word the verdict)."""

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    near_duplicate_threshold: float = field(
        0.8, "Similarity (0.5-1.0) from which two rows count as near-duplicates; 1.0 finds exact copies only.")
    redact_pii: bool = field(False, "Formatting will replace personal data with placeholders.")
    drop_near_duplicates: bool = field(False, "Formatting will keep one row of each near-duplicate cluster.")
    label_field: str = field("label", "meta field holding each row's class, for the balance check ('' for none).")
    replay_guard: bool = field(True, "Formatting will mix the base model's own answers to general prompts into "
                                     "training (nbkit.replay).")
    replay_share: float = field(DEFAULT_SHARE, "Share of the training split that will be replay rows.")

    def validate(self) -> None:
        self.require(bool(self.workspace), "workspace", "must not be empty")
        validate_threshold(self, "near_duplicate_threshold")

    @classmethod
    def from_config(cls, config: Any, **changes: Any) -> "QualityConfig":
        """The quality settings shared with another stage's config (FormatConfig), plus `changes`."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        shared = {name: getattr(config, name) for name in names if hasattr(config, name)}
        return cls(**{**shared, **changes})


def validate_threshold(config: Config, name: str) -> None:
    value = getattr(config, name)
    config.require(0.5 <= value <= 1.0, name, f"must be between 0.5 and 1.0, got {value}",
                   "0.8 catches rewordings, 1.0 only exact copies; set it in the parameters cell")


PREVIEW_CHARS = 120
MAX_CLUSTERS, MAX_MEMBERS = 50, 10  # near-duplicate clusters listed in the report
MAX_VERDICT = 8


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def summary_stats(values: list[int]) -> dict[str, float]:
    """count, min, mean, median, 95th percentile, max and total of a list of lengths."""
    if not values:
        return {"count": 0, "min": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0, "total": 0}
    ordered = sorted(values)
    p50, p95 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.95))
    return {"count": len(ordered), "min": ordered[0], "mean": round(statistics.fmean(ordered), 1), "p50": p50,
            "p95": p95, "max": ordered[-1], "total": sum(ordered)}


def _histogram(per_role: dict[str, list[int]], bins: int = 30) -> dict[str, Any]:
    """Counts per role over shared bins (up to the 99th percentile; longer values land in the last bin)."""
    everything = [v for values in per_role.values() for v in values]
    if not everything:
        return {"edges": [], "counts": {}}
    top = max(1.0, float(np.percentile(everything, 99)))
    edges = np.linspace(0, top, bins + 1)
    return {"edges": edges.round(1).tolist(),
            "counts": {role: np.histogram(np.clip(values, 0, top), bins=edges)[0].tolist()
                       for role, values in per_role.items()}}


def length_report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per_role: dict[str, list[int]] = {}
    for row in rows:
        for message in row["messages"]:
            per_role.setdefault(message["role"], []).append(len(message["content"]))
    chars = [sum(len(m["content"]) for m in row["messages"]) for row in rows]
    return {"chars": summary_stats(chars), "per_role": {role: summary_stats(v) for role, v in per_role.items()},
            "histogram": _histogram(per_role),
            "empty_assistant": sum(len(m["content"].strip()) < 2 for r in rows for m in r["messages"]
                                   if m["role"] == "assistant")}


def pii_report(rows: list[dict[str, Any]], max_examples: int = 20) -> dict[str, Any]:
    counts: Counter = Counter()
    rows_with = 0
    examples = []
    for row in rows:
        hit = False
        for i, message in enumerate(row["messages"]):
            for start, end, kind in pii_spans(message["content"]):
                hit = True
                counts[kind] += 1
                if len(examples) < max_examples:
                    examples.append({**provenance(row["meta"]), "message": i, "role": message["role"], "kind": kind,
                                     "start": start, "masked": mask_secret(message["content"][start:end])})
        rows_with += hit
    return {"counts": {kind: counts.get(kind, 0) for kind in PII_KINDS}, "rows_with_pii": rows_with,
            "examples": examples}


def label_report(rows: list[dict[str, Any]], field_name: str) -> dict[str, Any]:
    if not field_name:
        return {"field": "", "counts": {}, "missing": 0}
    values = [row["meta"].get(field_name) for row in rows]
    counts = Counter(str(v) for v in values if v is not None)
    return {"field": field_name, "counts": dict(sorted(counts.items())), "missing": sum(v is None for v in values)}


def quality_report(config: QualityConfig) -> dict[str, Any]:
    """Read data/clean.jsonl; write data/quality_report.json and data/diversity_map.json; return the report."""
    ws = Workspace(config.workspace)
    rows = read_jsonl(ws.require(ws.clean, "01_collect"))
    texts = [row_text(r) for r in rows]

    seen: set[str] = set()
    exact = 0
    for text in texts:
        key = normalize_text(text)
        exact += key in seen
        seen.add(key)

    clusters = near_duplicate_clusters(texts, config.near_duplicate_threshold)
    near = {
        "threshold": config.near_duplicate_threshold,
        "n_clusters": len(clusters),
        "rows_in_clusters": sum(len(c) for c in clusters),
        "rows_to_drop": sum(len(c) - 1 for c in clusters),
        # The first clusters, each with its first members: enough to see what repeats, small enough to read.
        "clusters": [[{**provenance(rows[i]["meta"]), "text": preview(texts[i])} for i in c[:MAX_MEMBERS]]
                     for c in clusters[:MAX_CLUSTERS]],
        "cluster_sizes": [len(c) for c in clusters[:MAX_CLUSTERS]],
    }

    diversity = diversity_map(texts)
    write_json(ws.diversity_map, {
        "x": diversity["x"], "y": diversity["y"], "cluster": diversity["cluster"],
        "text": [preview(t, 80) for t in texts], "top_terms": diversity["top_terms"]})

    report: dict[str, Any] = {
        "rows": len(rows),
        "exact_duplicates": exact,
        "near_duplicates": near,
        "pii": pii_report(rows),
        "lengths": length_report(rows),
        "labels": label_report(rows, config.label_field),
        "diversity": {k: v for k, v in diversity.items() if k not in ("x", "y", "cluster")},
        "replay": {"enabled": config.replay_guard, "share": config.replay_share if config.replay_guard else 0.0,
                   "rows_with_system_prompt": sum(any(m["role"] == "system" for m in r["messages"]) for r in rows)},
        "config": config.to_dict(),
    }
    report["verdict"] = verdict(report, config)
    write_json(ws.quality_report, report)
    return report


# -- the verdict -------------------------------------------------------------------------------

FORMAT_PARAMS = "02_format's parameters cell (or the quality panel)"


def _count(n: int, word: str, plural: str = "") -> str:
    return f"{n:,} {word if n == 1 else plural or word + 's'}"


def _item(level: str, message: str, fix: str = "") -> dict[str, str]:
    return {"level": level, "message": message, "fix": fix}


def verdict(report: dict[str, Any], config: QualityConfig) -> list[dict[str, str]]:
    """At most MAX_VERDICT plain-language findings, problems first: {"level", "message", "fix"}."""
    items = []
    n = report["rows"]
    if n < 100:
        items.append(_item("warn", f"Only {_count(n, 'row')}. A fine-tune usually needs a few hundred good "
                                   "examples to learn a pattern reliably.",
                           "Add more examples in 01_collect (`sources`)."))
    else:
        items.append(_item("good", f"{n:,} rows: enough to learn a narrow task."))

    near, exact = report["near_duplicates"], report["exact_duplicates"]
    if near["n_clusters"]:
        share = near["rows_in_clusters"] / max(n, 1)
        exact_note = f" ({exact} are exact copies)" if exact else ""
        if config.drop_near_duplicates:
            items.append(_item("good", f"{near['rows_in_clusters']} rows sit in {near['n_clusters']} near-duplicate "
                                       f"clusters{exact_note}; formatting keeps one row of each, dropping "
                                       f"{near['rows_to_drop']}.", "drop_near_duplicates is on."))
        else:
            items.append(_item(
                "fix" if share >= 0.05 else "warn",
                f"{near['rows_in_clusters']} rows ({share:.0%}) sit in {near['n_clusters']} near-duplicate "
                f"clusters{exact_note}. Repeats get extra weight in training and can leak from train into test.",
                f"Set drop_near_duplicates = True in {FORMAT_PARAMS} to keep one row per cluster."))
    else:
        items.append(_item("good", "No exact or near duplicates."))

    pii = report["pii"]
    if pii["rows_with_pii"]:
        found = ", ".join(f"{count} {kind.replace('_', ' ')}{'s' if count > 1 else ''}"
                          for kind, count in pii["counts"].items() if count)
        rows_with = f"{_count(pii['rows_with_pii'], 'row')} with personal data or secrets ({found})"
        if config.redact_pii:
            items.append(_item("good", f"{rows_with}; formatting replaces them with placeholders.",
                               "redact_pii is on."))
        else:
            items.append(_item("fix", f"{rows_with}. A fine-tuned model can repeat them word for word.",
                               f"Set redact_pii = True in {FORMAT_PARAMS}, or remove them at the source."))
    else:
        items.append(_item("good", "No emails, phone numbers, card numbers, IP addresses or API keys found."))

    labels = report["labels"]
    if labels["counts"]:
        counts = labels["counts"]
        total = sum(counts.values())
        smallest = min(counts, key=counts.get)
        share = counts[smallest] / total
        fair = 1 / len(counts)
        if len(counts) == 1:
            items.append(_item("warn", f"Every row has the same {labels['field']} '{smallest}': the model can only "
                                       "learn that one answer.", "Add examples of the other classes in 01_collect."))
        elif share < fair / 2:
            items.append(_item("warn", f"Labels unbalanced: '{smallest}' is only {share:.0%} of rows (an even share "
                                       f"would be {fair:.0%}); the model will rarely predict it.",
                               f"Collect more '{smallest}' examples in 01_collect; 03_split keeps the proportions "
                               "in every split (`stratify_by`)."))
        else:
            items.append(_item("good", f"Labels balanced: smallest class '{smallest}' is {share:.0%} of rows "
                                       f"({len(counts)} classes)."))
        if labels["missing"]:
            items.append(_item("warn", f"{_count(labels['missing'], 'row')} without `{labels['field']}`.",
                               "Add the field to those rows, or they all land in one stratum when splitting."))

    lengths = report["lengths"]
    if lengths["empty_assistant"]:
        empty = _count(lengths["empty_assistant"], "assistant reply", "assistant replies")
        items.append(_item("fix", f"{empty} empty or one character long: the model learns to answer with nothing.",
                           "Fix or remove those rows at the source."))
    chars = lengths["chars"]
    if chars["count"] and chars["max"] > 10 * max(chars["p50"], 1) and chars["max"] > 2000:
        items.append(_item("warn", f"A few rows are very long (longest {chars['max']:,} characters, median "
                                   f"{chars['p50']:,}): they cost memory and may be cut at max_seq_len.",
                           "Check over_max_seq_len in the format report; raise max_seq_len or shorten them."))
    elif chars["count"]:
        items.append(_item("good", f"Lengths consistent: median row {chars['p50']:,} characters, longest "
                                   f"{chars['max']:,}."))

    diversity = report["diversity"]
    for warning in diversity["warnings"]:
        items.append(_item("warn", warning, "Collect more varied examples in 01_collect."))
    if not diversity["warnings"] and diversity["n_clusters"] > 1:
        items.append(_item("good", f"Varied topics: {diversity['n_clusters']} clusters, the largest holds "
                                   f"{diversity['largest_cluster_share']:.0%} of rows."))

    items.append(_replay_item(report))
    order = {"fix": 0, "warn": 1, "good": 2}
    items.sort(key=lambda item: order[item["level"]])  # stable: problems first, in the order above
    return items[:MAX_VERDICT]


def _replay_item(report: dict[str, Any]) -> dict[str, str]:
    replay, n = report["replay"], report["rows"]
    if not replay["enabled"]:
        return _item("warn", "Replay guard off: nothing in training reminds the model how it answered ordinary "
                             "requests, so it may answer everything like the task. Watch the forgetting probe in "
                             "05_evaluate.", f"Set replay_guard = True in {FORMAT_PARAMS}.")
    without = n - replay["rows_with_system_prompt"]
    if without > n / 2:
        return _item("warn", f"Replay guard on, but {_count(without, 'row')} of {n:,} have no system prompt: the "
                             "task then shares its context with the replay rows, and the model has less to tell a "
                             "task request from an ordinary one.",
                     "Give every row the same short system prompt that names the task (a system column in "
                     "01_collect); at inference, send that prompt to get the task's answers.")
    return _item("good", f"Replay guard on: {replay['share']:.0%} of the training rows will be the base model's own "
                         "answers to general prompts, so it keeps answering ordinary requests as before; the "
                         "task's system prompt triggers the task.", "replay_guard is on.")


def verdict_text(report: dict[str, Any]) -> str:
    """The verdict as plain text lines, for headless runs and logs."""
    marks = {"good": "OK  ", "warn": "WARN", "fix": "FIX "}
    lines = [f"Data quality: {report['rows']} rows"]
    for item in report["verdict"]:
        lines.append(f"[{marks[item['level']]}] {item['message']}")
        if item["fix"] and item["level"] != "good":
            lines.append(f"       -> {item['fix']}")
    return "\n".join(lines)
