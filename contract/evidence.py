"""Evidence: facts about one (history, candidate) pair, computed from training interactions, shown in the prompt.

The model is not asked to recall statistics it cannot hold: the prompt states them, and the rationale reasons
over them. ONE function, ``compute_evidence``, produces the evidence for the service (serving), SFT, RL,
diagnose and eval alike, from one versioned artifact (``EvidenceStats``, shipped with the checkpoint as
``evidence.json.gz``):

- **links**: how often the candidate followed each of the user's most recent items (within ``window`` steps)
  in the training sequences, per item (``#1`` is the latest), and the sum over older history items;
- **popularity**: how many training interactions the candidate has, and its top-percent rank;
- **co-purchases**: how many (other) users had the candidate and a history item anywhere in their training
  sequences, summed over the history's distinct items (item-kNN: the whole-history collaborative signal a
  sequence model learns, which links within a few steps miss), where the statistics count them;
- **a shared title word** with the most recent history item that has one (words common to more than 1% of
  the catalogue's titles are ignored: data-driven, no catalogue-specific word list);
- **shared attributes** (``brand``, ``category``...) where the catalogue carries them;
- **the next-item rank**, where the checkpoint ships a sequence model (``contract.sequence``): where it ranks
  the candidate among the whole catalogue after this history (``unknown`` where it cannot say).

Training examples leave the example's own user out of the counts (``leave_out``), so an SFT positive carries
a link exactly when another user made the same move, as at serving time; without that, every training
positive would be "often bought after" its predecessor and the model would learn "link means yes".
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.catalogue import item_order
from contract.sequence import SequenceRanker

EVIDENCE_FILE = "evidence.json.gz"
RECENT_REFS = 5  # links from the 5 most recent history items are shown one by one, older ones summed
MAX_ATTRIBUTES = 2
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def title_words(title: str) -> set[str]:
    """Lower-cased word tokens of a title (letters and digits of any script)."""
    return set(_WORD.findall(title.lower()))


@dataclass(frozen=True)
class Link:
    ref: int  # the history item's reference in the prompt: 1 = the latest
    item_id: str
    count: int  # times the candidate followed it within ``window`` steps in training sequences


@dataclass(frozen=True)
class SharedWord:
    word: str
    ref: int
    item_id: str


@dataclass(frozen=True)
class SharedAttribute:
    name: str
    value: str
    ref: int
    item_id: str


@dataclass(frozen=True)
class NextItemRank:
    """The sequence model's judgement: the candidate's catalogue rank after the history (1 = its top pick), or
    ``None`` where it has no id for the candidate or knows no item of the history."""

    rank: int | None

    def text(self) -> str:
        return f"next-item rank {self.rank if self.rank is not None else 'unknown'}"


@dataclass(frozen=True)
class Evidence:
    """What the prompt says about one candidate (``text``), and the same as fields for the API."""

    links: tuple[Link, ...] = ()  # from the RECENT_REFS latest history items, latest first
    older_links: int = 0  # summed over the history items older than those
    popularity: int = 0  # training interactions with the candidate
    popularity_top_percent: int | None = None  # None: never seen in training
    shared_word: SharedWord | None = None
    attributes: tuple[SharedAttribute, ...] = ()
    next_item: NextItemRank | None = None  # None: the checkpoint has no sequence model (the field is not shown)
    co_bought: int | None = None  # None: the statistics count no co-purchases (a v2/v3 checkpoint: not shown)

    def text(self) -> str:
        """The ``Evidence:`` line's content, e.g. ``next-item rank 37; follows #1 14x, #3 2x, older 3x;
        co-bought 45x; popularity 812 (top 3%); shares "zelda" with #2``."""
        links = [f"#{link.ref} {link.count}x" for link in self.links]
        if self.older_links:
            links.append(f"older {self.older_links}x")
        parts = [] if self.next_item is None else [self.next_item.text()]
        parts.append("follows " + ", ".join(links) if links else "no links")
        if self.co_bought is not None:
            parts.append(f"co-bought {self.co_bought}x")
        if self.popularity_top_percent is None:
            parts.append("popularity 0 (new)")
        else:
            parts.append(f"popularity {self.popularity} (top {self.popularity_top_percent}%)")
        if self.shared_word is not None:
            parts.append(f'shares "{self.shared_word.word}" with #{self.shared_word.ref}')
        parts += [f"same {a.name} as #{a.ref}" for a in self.attributes]
        return "; ".join(parts)


@dataclass(frozen=True)
class LeaveOut:
    """One user's own contributions to the counts, subtracted when computing a training example's evidence."""

    follows: Mapping[tuple[str, str], int] = field(default_factory=dict)
    popularity: Mapping[str, int] = field(default_factory=dict)
    items: frozenset[str] = frozenset()  # the user counts once in the co-purchases of any two of these

    @classmethod
    def of_sequence(cls, sequence: Sequence[str], window: int) -> LeaveOut:
        return cls(follow_pairs(sequence, window), Counter(sequence), frozenset(sequence))


def co_bought_keys(sequences: Iterable[Sequence[str]], index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair of distinct items that one user had, as ``low * len(index) + high`` keys (sorted),
    with how many users had it."""
    size = len(index)
    keys = []
    for sequence in sequences:
        ids = np.array(sorted({index[item] for item in sequence}), dtype=np.int64)
        low, high = np.triu_indices(len(ids), k=1)
        keys.append(ids[low] * size + ids[high])
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    unique, counts = np.unique(np.concatenate(keys), return_counts=True)
    return unique, counts.astype(np.int32)


def follow_pairs(sequence: Sequence[str], window: int) -> Counter:
    """(earlier item, later item) pairs at most ``window`` steps apart in one user's sequence."""
    pairs: Counter = Counter()
    for i, item in enumerate(sequence):
        for previous in sequence[max(0, i - window) : i]:
            pairs[(previous, item)] += 1
    return pairs


class EvidenceStats:
    """The statistics evidence is computed from: popularity and the top followers of every item, counted on
    training sequences only and pruned to ``max_followers`` per item (a bounded artifact); co-purchases (users
    per pair of distinct items in one training sequence, every pair kept: ``co_bought_keys``), or none for
    statistics of a format before v5; the words too common to be evidence; and string attributes of the
    catalogue's items. Followers are kept as one sorted CSR array and co-purchases as sorted pair keys (a few MB
    for tens of thousands of items, delta-coded on disk), so a lookup is a binary search."""

    def __init__(
        self,
        item_ids: Sequence[str],
        popularity: Sequence[int],
        indptr: np.ndarray,
        followers: np.ndarray,
        counts: np.ndarray,
        window: int,
        max_followers: int,
        stopwords: Iterable[str],
        attributes: Mapping[str, Mapping[str, str]] | None = None,
        co_bought: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.item_ids = list(item_ids)
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.popularity_of = np.asarray(popularity, dtype=np.int64)
        self.indptr, self.followers, self.counts = indptr, followers, counts
        self.window = window
        self.max_followers = max_followers
        self.stopwords = frozenset(stopwords)
        self.attributes = {k: dict(v) for k, v in (attributes or {}).items()}
        self.co_bought = co_bought  # (sorted pair keys, users per pair); None: not counted
        seen = np.sort(self.popularity_of[self.popularity_of > 0])[::-1]
        self._by_popularity = -seen  # ascending, for searchsorted
        self.version = self._digest()

    # --- building and the artifact -------------------------------------------------------------------------
    @classmethod
    def from_sequences(
        cls,
        sequences: Iterable[Sequence[str]],
        titles: Mapping[str, str],
        window: int = 3,
        max_followers: int = 256,
        stopword_share: float = 0.01,
        attributes: Mapping[str, Mapping[str, str]] | None = None,
        co_bought: bool = False,
    ) -> EvidenceStats:
        """Count ``sequences`` (training sequences only: the caller's promise) for the catalogue ``titles``;
        co-purchases too where ``co_bought`` (statistics for prompt format v5)."""
        item_ids = item_order(titles)
        index = {item: i for i, item in enumerate(item_ids)}
        popularity = np.zeros(len(item_ids), dtype=np.int64)
        pairs: Counter = Counter()
        sequences = list(sequences)
        for sequence in sequences:
            for item in sequence:
                popularity[index[item]] += 1
            pairs.update(follow_pairs(sequence, window))
        by_source: dict[int, list[tuple[int, int]]] = {}
        for (previous, item), count in pairs.items():
            by_source.setdefault(index[previous], []).append((count, index[item]))
        indptr, followers, counts = [0], [], []
        for source in range(len(item_ids)):
            kept = sorted(by_source.get(source, []), key=lambda t: (-t[0], t[1]))[:max_followers]
            kept.sort(key=lambda t: t[1])
            followers += [f for _, f in kept]
            counts += [c for c, _ in kept]
            indptr.append(len(followers))
        document_frequency = Counter(w for title in titles.values() for w in title_words(title))
        limit = stopword_share * len(titles)
        stopwords = {w for w, n in document_frequency.items() if n > limit or len(w) <= 2 or w.isdigit()}
        return cls(item_ids, popularity.tolist(), np.asarray(indptr, dtype=np.int64),
                   np.asarray(followers, dtype=np.int32), np.asarray(counts, dtype=np.int32), window, max_followers,
                   stopwords, attributes, co_bought_keys(sequences, index) if co_bought else None)  # fmt: skip

    @property
    def has_co_bought(self) -> bool:
        return self.co_bought is not None

    def _digest(self) -> str:
        digest = hashlib.sha256()
        for array in (self.popularity_of, self.indptr, self.followers, self.counts):
            digest.update(np.ascontiguousarray(array).tobytes())
        for array in self.co_bought or ():
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(json.dumps([self.item_ids, self.window, sorted(self.stopwords), self.attributes],
                                 sort_keys=True).encode())  # fmt: skip
        return digest.hexdigest()[:16]

    def save(self, directory: Path) -> Path:
        path = Path(directory) / EVIDENCE_FILE
        payload = {
            "version": self.version, "window": self.window, "max_followers": self.max_followers,
            "item_ids": self.item_ids, "popularity": self.popularity_of.tolist(), "indptr": self.indptr.tolist(),
            "followers": self.followers.tolist(), "counts": self.counts.tolist(),
            "stopwords": sorted(self.stopwords), "attributes": self.attributes,
        }  # fmt: skip
        if self.co_bought is not None:
            keys, counts = self.co_bought
            payload["co_bought_key_deltas"] = np.diff(keys, prepend=0).tolist()  # small numbers: gzip well
            payload["co_bought_counts"] = counts.tolist()
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as handle:
            json.dump(payload, handle, separators=(",", ":"))
        return path

    @classmethod
    def load(cls, directory: Path) -> EvidenceStats:
        path = Path(directory) / EVIDENCE_FILE
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            raw = json.load(handle)
        co_bought = None
        if "co_bought_key_deltas" in raw:
            co_bought = (np.cumsum(np.asarray(raw["co_bought_key_deltas"], dtype=np.int64)),
                         np.asarray(raw["co_bought_counts"], dtype=np.int32))  # fmt: skip
        stats = cls(raw["item_ids"], raw["popularity"], np.asarray(raw["indptr"], dtype=np.int64),
                    np.asarray(raw["followers"], dtype=np.int32), np.asarray(raw["counts"], dtype=np.int32),
                    raw["window"], raw["max_followers"], raw["stopwords"], raw.get("attributes"),
                    co_bought)  # fmt: skip
        if stats.version != raw["version"]:
            raise ValueError(f"{path}: content does not match its version {raw['version']!r} (got {stats.version})")
        return stats

    # --- lookups ---------------------------------------------------------------------------------------------
    def popularity(self, item_id: str | None) -> int:
        i = self.index.get(item_id)
        return int(self.popularity_of[i]) if i is not None else 0

    def top_percent(self, count: int) -> int | None:
        """The candidate's popularity as "top p%" of the items seen in training (1 = the most popular 1%)."""
        if count <= 0 or not len(self._by_popularity):
            return None
        better = int(np.searchsorted(self._by_popularity, -count, side="left"))  # items with a larger count
        return max(1, math.ceil(100 * (better + 1) / len(self._by_popularity)))

    def follow_count(self, previous: str, item: str) -> int:
        source, target = self.index.get(previous), self.index.get(item)
        if source is None or target is None:
            return 0
        start, end = self.indptr[source], self.indptr[source + 1]
        position = start + int(np.searchsorted(self.followers[start:end], target))
        return int(self.counts[position]) if position < end and self.followers[position] == target else 0

    def follow_counts(self, previous: Sequence[str | None], items: Sequence[str | None]) -> np.ndarray:
        """``follow_count`` for every (previous[r], items[c]) pair at once, (R, C): one vectorised binary search
        per previous item instead of one per pair (a request's evidence stays well under a millisecond)."""
        targets = np.asarray([self.index.get(item, -1) for item in items], dtype=np.int64)
        out = np.zeros((len(previous), len(items)), dtype=np.int64)
        for row, item in enumerate(previous):
            source = self.index.get(item)
            if source is None:
                continue
            start, end = int(self.indptr[source]), int(self.indptr[source + 1])
            if start == end:
                continue
            followers = self.followers[start:end]
            position = np.minimum(np.searchsorted(followers, targets), end - start - 1)
            out[row] = np.where(followers[position] == targets, self.counts[start:end][position], 0)
        return out

    def co_bought_counts(self, history: Sequence[str | None], items: Sequence[str | None]) -> np.ndarray:
        """Users who had both history[r] and items[c], (R, C); 0 for an item the statistics do not know and for
        an item paired with itself."""
        size = len(self.item_ids)
        rows = np.asarray([self.index.get(item, -1) for item in history], dtype=np.int64)[:, None]
        columns = np.asarray([self.index.get(item, -1) for item in items], dtype=np.int64)[None, :]
        out = np.zeros((len(history), len(items)), dtype=np.int64)
        if self.co_bought is None or not len(self.co_bought[0]) or not out.size:
            return out
        keys, counts = self.co_bought
        wanted = np.minimum(rows, columns) * size + np.maximum(rows, columns)
        position = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        valid = (rows >= 0) & (columns >= 0) & (rows != columns) & (keys[position] == wanted)
        return np.where(valid, counts[position], 0)

    def content_words(self, title: str) -> set[str]:
        return title_words(title) - self.stopwords


@dataclass(frozen=True)
class Item:
    """An item as evidence sees it: its id and its title (as shown in the prompt). ``in_catalogue=False``: an
    item known by its text alone (a rerank document, whose id is only its position), so its id is never looked
    up in the statistics and its evidence is a new item's, wherever it stands in the request."""

    item_id: str
    title: str
    in_catalogue: bool = True

    @property
    def stats_id(self) -> str | None:
        """The id the statistics know it by: none for an item outside the catalogue."""
        return self.item_id if self.in_catalogue else None


def compute_evidence(
    history: Sequence[Item],
    candidate: Item,
    stats: EvidenceStats,
    leave_out: LeaveOut | None = None,
    sequence: SequenceRanker | None = None,
) -> Evidence:
    """The evidence for ``candidate`` given ``history`` (the prompt's history, OLDEST first; its last item is
    ``#1``). ``leave_out`` subtracts one user's own sequence from the counts (training examples only);
    ``sequence`` adds the next-item rank (training examples pass a model that never saw their target)."""
    return compute_evidence_batch(history, [candidate], stats, leave_out, sequence)[0]


def compute_evidence_batch(
    history: Sequence[Item],
    candidates: Sequence[Item],
    stats: EvidenceStats,
    leave_out: LeaveOut | None = None,
    sequence: SequenceRanker | None = None,
) -> list[Evidence]:
    """``compute_evidence`` for every candidate of one history (the history's lookups, and the sequence
    model's forward pass, done once)."""
    own = leave_out or LeaveOut()
    ranks: list[int | None] | None = None
    if sequence is not None:
        ranks = sequence.ranks([item.stats_id for item in history], [c.stats_id for c in candidates])
    latest_first = list(reversed(history))
    counts = stats.follow_counts([item.stats_id for item in latest_first], [c.stats_id for c in candidates])
    co_bought = _co_bought(latest_first, candidates, stats, own)
    history_words = [stats.content_words(item.title) for item in latest_first]
    out = []
    for column, candidate in enumerate(candidates):
        links, older = [], 0
        for ref, item in enumerate(latest_first, start=1):
            count = int(counts[ref - 1, column]) - own.follows.get((item.item_id, candidate.item_id), 0)
            if count <= 0:
                continue
            if ref <= RECENT_REFS:
                links.append(Link(ref, item.item_id, count))
            else:
                older += count
        popularity = max(0, stats.popularity(candidate.stats_id) - own.popularity.get(candidate.item_id, 0))
        words = stats.content_words(candidate.title)
        shared = None
        if words:
            for ref, (item, theirs) in enumerate(zip(latest_first, history_words, strict=True), start=1):
                common = words & theirs
                if common:
                    shared = SharedWord(max(sorted(common), key=len), ref, item.item_id)
                    break
        next_item = NextItemRank(ranks[column]) if ranks is not None else None
        out.append(Evidence(tuple(links), older, popularity, stats.top_percent(popularity), shared,
                            _shared_attributes(latest_first, candidate, stats), next_item,
                            None if co_bought is None else int(co_bought[column])))  # fmt: skip
    return out


def _co_bought(
    latest_first: Sequence[Item], candidates: Sequence[Item], stats: EvidenceStats, own: LeaveOut
) -> np.ndarray | None:
    """Per candidate: co-purchases with the history's distinct items, summed; less the user's own (a training
    example's user had its history and, if it is in its sequence, the candidate). None: not counted."""
    if not stats.has_co_bought:
        return None
    distinct = list(dict.fromkeys(item.stats_id for item in latest_first if item.stats_id is not None))
    counts = stats.co_bought_counts(distinct, [c.stats_id for c in candidates])
    if own.items:  # a training example: one check per history item and per candidate, not per pair
        history_is_own = np.asarray([h in own.items for h in distinct], dtype=bool)[:, None]
        candidate_is_own = np.asarray([c.item_id in own.items for c in candidates], dtype=bool)[None, :]
        counts = np.where(history_is_own & candidate_is_own & (counts > 0), counts - 1, counts)
    return counts.sum(axis=0)


def _shared_attributes(latest_first: Sequence[Item], candidate: Item, stats: EvidenceStats) -> tuple:
    mine = stats.attributes.get(candidate.stats_id, {})
    found = []
    for name, value in sorted(mine.items()):
        ref = next((r for r, item in enumerate(latest_first, start=1)
                    if stats.attributes.get(item.stats_id, {}).get(name) == value), None)  # fmt: skip
        if ref is not None:
            found.append(SharedAttribute(name, value, ref, latest_first[ref - 1].item_id))
    return tuple(found[:MAX_ATTRIBUTES])


CITED_REF = re.compile(r"#(\d+)")
# claims a rationale makes, by kind, each checked against the same claim on the evidence line
_CLAIMS = (
    ("link count", re.compile(r"#(\d+) (\d+)x"), re.compile(r"#(\d+) (\d+)x")),
    ("popularity", re.compile(r"top (\d+)%"), re.compile(r"top (\d+)%")),
    ("shared word", re.compile(r'"([^"]+)" with #(\d+)'), re.compile(r'"([^"]+)" with #(\d+)')),
    ("shared word", re.compile(r"(?i)shares a word with #(\d+)"), re.compile(r'shares "[^"]+" with #(\d+)')),
    ("older links", re.compile(r"older links \((\d+)x\)"), re.compile(r"older (\d+)x")),
    ("attribute", re.compile(r"same (\w+) as #(\d+)"), re.compile(r"same (\w+) as #(\d+)")),
    ("next-item rank", re.compile(r"(?i)\brank (\d+|unknown)"), re.compile(r"next-item rank (\d+|unknown)")),
    ("co-purchases", re.compile(r"(?i)co-bought (\d+)x"), re.compile(r"co-bought (\d+)x")),
)
UNSTATED_KINDS = (*dict.fromkeys(kind for kind, _, _ in _CLAIMS), "history item", "number")
"""What a rationale can cite that its evidence does not state: a claim of each kind, a history item (``#k``) the
line does not name, or any other number the line does not hold."""


def unstated_claims(rationale: str, evidence_text: str) -> list[tuple[str, str]]:
    """What a rationale cites that its prompt's evidence line does not state, as (kind, text) in
    ``UNSTATED_KINDS``. Each claim it makes (a link's count, the popularity rank, the shared word, the older
    links' total, a shared attribute, the next-item rank, the co-purchases) must be the evidence's own claim,
    and every other ``#k`` and number must appear on the line too. Empty: faithful."""
    problems = []
    for kind, in_rationale, in_evidence in _CLAIMS:
        stated = {match.groups() for match in in_evidence.finditer(evidence_text)}
        problems += [(kind, m.group(0)) for m in in_rationale.finditer(rationale) if m.groups() not in stated]
    stated_refs = {int(k) for k in CITED_REF.findall(evidence_text)}
    stated_numbers = {int(n) for n in re.findall(r"\d+", evidence_text)}
    refs = sorted({int(k) for k in CITED_REF.findall(rationale)})
    problems += [("history item", f"#{k}") for k in refs if k not in stated_refs]
    numbers = re.findall(r"\d+", CITED_REF.sub(" ", rationale))
    problems += [("number", n) for n in numbers if int(n) not in stated_numbers]
    return problems


def unfaithful_citations(rationale: str, evidence_text: str) -> list[str]:
    """The texts of ``unstated_claims``. Empty: faithful."""
    return [text for _, text in unstated_claims(rationale, evidence_text)]
