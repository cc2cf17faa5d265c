"""Training forwards without padding inside an example: a prefix and all its continuations in ONE sequence.

``grouped_forward`` (trainer/policy.py) runs a history prefix once and its candidate rows on top of it, one
row per candidate. Those rows differ in length (titles and rationales vary), so every row is padded to the
longest: on the Makefile's SFT batches a third of the suffix tokens computed were pads, and so were almost
half of the positions projected onto the vocabulary. Here each example is one packed sequence::

    [prefix][row 1][row 2] ... [row N][pad ...]

with a block mask: a row's tokens attend to the prefix and to their own earlier tokens, never to another
row; position ids restart after the prefix for every row. So every row computes what the contiguous
``prefix + row`` would (``tests/test_sft.py`` checks log-probabilities and gradients against each
``prefix + row`` run alone), pads only fill out the micro-batch's shorter examples, and the vocabulary
projection runs only where a loss is taken.

The price is dense attention over the packed sequence (a few hundred tokens), small next to the projections
it saves at this model's sizes (docs/training.md has the measured step times).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Tokens = Sequence[int]


@dataclass(frozen=True)
class PackedBatch:
    """Model inputs for a micro-batch of packed examples, and where each row's tokens sit in them."""

    input_ids: torch.Tensor  # (B, N) right-padded
    position_ids: torch.Tensor  # (B, N)
    attention_mask: torch.Tensor  # (B, 1, N, N) bool, True where a query may attend to a key
    row_starts: list[list[int]]  # per example, per row: the column of the row's first token


def pack(prefixes: Sequence[Tokens], rows: Sequence[Sequence[Tokens]], pad_id: int, device) -> PackedBatch:
    """Lay out each prefix followed by its rows, with the block-causal mask described in the module doc."""
    lengths = [len(p) + sum(len(r) for r in group) for p, group in zip(prefixes, rows, strict=True)]
    width = max(lengths)
    ids = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(prefixes), width), dtype=torch.long)
    segment = torch.full((len(prefixes), width), -1, dtype=torch.long)  # 0 prefix, j > 0 row j, -1 pad
    row_starts = []
    for b, (prefix, group) in enumerate(zip(prefixes, rows, strict=True)):
        ids[b, : len(prefix)] = torch.tensor(list(prefix), dtype=torch.long)
        positions[b, : len(prefix)] = torch.arange(len(prefix))
        segment[b, : len(prefix)] = 0
        column, starts = len(prefix), []
        for j, row in enumerate(group, start=1):
            ids[b, column : column + len(row)] = torch.tensor(list(row), dtype=torch.long)
            positions[b, column : column + len(row)] = torch.arange(len(prefix), len(prefix) + len(row))
            segment[b, column : column + len(row)] = j
            starts.append(column)
            column += len(row)
        row_starts.append(starts)
    query, key = segment.unsqueeze(2), segment.unsqueeze(1)  # (B, N, 1), (B, 1, N)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    visible = causal & (key >= 0) & ((key == 0) | (key == query))
    visible |= torch.eye(width, dtype=torch.bool)  # a pad query sees itself only (no all-masked row, no NaN)
    return PackedBatch(ids.to(device), positions.to(device), visible.unsqueeze(1).to(device), row_starts)


def packed_hidden_states(model, batch: PackedBatch) -> torch.Tensor:
    """The decoder's final hidden states (after its last norm), (B, N, H): no vocabulary projection yet."""
    out = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids, use_cache=False)  # fmt: skip
    return out.last_hidden_state


def target_log_probs(
    model, prefixes: Sequence[Tokens], rows: Sequence[Sequence[tuple[Tokens, int]]], pad_id: int
) -> torch.Tensor:
    """Log-probabilities of every row's trailing target tokens, concatenated in row order (``target_log_softmax``
    gathered at the targets)."""
    log_probs, targets = target_log_softmax(model, prefixes, rows, pad_id)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def target_log_softmax(
    model, prefixes: Sequence[Tokens], rows: Sequence[Sequence[tuple[Tokens, int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-softmax over the vocabulary at every position that predicts a target (T, V), and the target ids
    (T,), both in row order: for losses that weigh other tokens than the target (soft labels).

    rows: per prefix, its (row ids, n) pairs, where the last n ids of the row are the targets (each
    predicted from the token before it, so n must be smaller than the row's length plus the prefix's).
    Only the positions that predict a target are projected onto the vocabulary."""
    batch = pack(prefixes, [[ids for ids, _ in group] for group in rows], pad_id, model.device)
    hidden = packed_hidden_states(model, batch)
    example, column, target = [], [], []
    for b, (prefix, group) in enumerate(zip(prefixes, rows, strict=True)):
        for (ids, n), start in zip(group, batch.row_starts[b], strict=True):
            for c in range(start + len(ids) - n, start + len(ids)):  # the target tokens' columns
                example.append(b)
                column.append(c - 1 if c > start else len(prefix) - 1)  # a row's first token follows the prefix
            target += list(ids[len(ids) - n :])
    index = torch.tensor(example, device=hidden.device), torch.tensor(column, device=hidden.device)
    logits = model.get_output_embeddings()(hidden[index]).float()  # (T, V)
    return torch.log_softmax(logits, dim=-1), torch.tensor(target, device=hidden.device)
