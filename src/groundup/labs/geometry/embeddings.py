"""Token embeddings after training: are close vectors used alike?

The claim "close vectors = similar meanings" made measurable. For every token seen often enough in
the corpus, its nearest neighbour by cosine similarity of the embedding rows,

    cos(e_a, e_b) = e_a·e_b / (‖e_a‖ ‖e_b‖),   nn(a) = argmax_{b ≠ a} cos(e_a, e_b),

is compared with a token drawn at random from the same set, on two usage properties measured on the
text, not on the embeddings:

    class match      same surface class: word-initial space or not × (lowercase word, Capitalised
                     word, punctuation, whitespace, mixed)
    next-token       cosine similarity of the two tokens' next-token distributions P(· | a), P(· | b)
    similarity       counted over the training split

The random baseline is exact (the average over every other eligible token, no sampling). The same
measurement on the untrained embedding (its random initialisation) is the control: there the
nearest neighbour should do no better than a random token.
"""

from __future__ import annotations

import numpy as np

PCA_TOKENS = 150  # the most frequent tokens drawn in the 2-D projection
COMMON = 8  # how many frequent word tokens get their nearest neighbours listed


def token_class(text: str) -> str:
    """The surface class of a token's text: '␣' prefix when it starts with a space, then its kind."""
    space, core = ("␣", text[1:]) if text.startswith(" ") else ("", text)
    if core == "" or core.isspace():
        kind = "whitespace"
    elif core.isalpha():
        kind = "Capitalised" if core[0].isupper() else "lowercase"
    elif not any(c.isalnum() for c in core):
        kind = "punctuation"
    else:
        kind = "mixed"
    return space + kind


def cosine_matrix(E: np.ndarray) -> np.ndarray:
    """cos(e_a, e_b) for every pair of rows: (V, V)."""
    unit = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def nearest_neighbours(E: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each of `ids`, the nearest other id of `ids` by cosine similarity."""
    cos = cosine_matrix(E[ids])
    np.fill_diagonal(cos, -np.inf)
    return ids[np.argmax(cos, axis=1)]


def next_token_similarity(tokens: np.ndarray, vocab_size: int, ids: np.ndarray) -> np.ndarray:
    """cos(P(· | a), P(· | b)) for a, b in ids, from the bigram counts of `tokens`: (n, n)."""
    pairs = tokens[:-1].astype(np.int64) * vocab_size + tokens[1:].astype(np.int64)
    counts = np.bincount(pairs, minlength=vocab_size * vocab_size).reshape(vocab_size, vocab_size)[ids].astype(np.float64)
    return cosine_matrix(counts)


def usage_agreement(E: np.ndarray, ids: np.ndarray, classes: np.ndarray, next_sim: np.ndarray) -> dict:
    """How often nn(a) shares a's class, and how alike their next-token distributions are, against
    the exact average over a random other eligible token."""
    n = len(ids)
    position = {int(t): i for i, t in enumerate(ids)}
    nn = np.array([position[int(t)] for t in nearest_neighbours(E, ids)])
    same = classes[:, None] == classes[None, :]
    off_diagonal = ~np.eye(n, dtype=bool)
    out = {
        "class_match": float(np.mean(classes == classes[nn])),
        "class_match_random": float(np.mean((same & off_diagonal).sum(1) / (n - 1))),
        "next_similarity": float(np.mean(next_sim[np.arange(n), nn])),
        "next_similarity_random": float(np.mean((next_sim * off_diagonal).sum(1) / (n - 1))),
    }
    out["class_match_gain"] = out["class_match"] - out["class_match_random"]
    out["next_similarity_gain"] = out["next_similarity"] - out["next_similarity_random"]
    return out


def pca_2d(E: np.ndarray) -> np.ndarray:
    """The rows of E projected on their first two principal components: (n, 2)."""
    centred = E - E.mean(axis=0)
    _, _, Vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ Vt[:2].T


def measure(E_trained: np.ndarray, E_initial: np.ndarray, tokens: np.ndarray, decode, min_count: int) -> dict:
    """Neighbours, usage agreement (trained, untrained control, random baseline) and the projection.
    decode(id) → the token's text."""
    V = E_trained.shape[0]
    counts = np.bincount(tokens.astype(np.int64), minlength=V)
    ids = np.flatnonzero(counts >= min_count)
    ids = ids[np.argsort(-counts[ids], kind="stable")]  # most frequent first
    texts = [decode(int(t)) for t in ids]
    classes = np.array([token_class(t) for t in texts])
    next_sim = next_token_similarity(tokens, V, ids)
    trained, untrained = (usage_agreement(E, ids, classes, next_sim) for E in (E_trained, E_initial))
    words = [i for i, t in enumerate(texts) if t.startswith(" ") and t[1:].isalpha()][:COMMON]
    cos = cosine_matrix(E_trained[ids])
    neighbours = []
    for i in words:
        order = [j for j in np.argsort(-cos[i]) if j != i][:5]
        neighbours.append({"token": texts[i], "neighbours": [texts[j] for j in order],
                           "cosines": [float(cos[i, j]) for j in order]})
    top = slice(0, PCA_TOKENS)
    return {"eligible_tokens": len(ids), "trained": trained, "untrained": untrained,
            "detail": {"neighbours": neighbours, "pca": {"tokens": texts[top], "classes": classes[top].tolist(),
                                                         "xy": pca_2d(E_trained[ids[top]]).round(4).tolist()}}}
