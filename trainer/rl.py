"""End-to-end RL for Reasoning to Rank: the listwise NDCG@10 reward reaches rationales and scoring head.

One step, for each of ``users_per_step`` users (1 positive + N negatives) and each of G rollouts:

1. sample a rationale per candidate from the policy (temperature > 0), the history prefix shared;
2. score each candidate exactly as the service does (``PromptAssembler.score_input``: prompt + the rationale's
   ids + the answer cue), score = log P(yes) - log P(no) at the answer position;
3. sample M rankings from the Plackett–Luce distribution over the scores; reward = NDCG@10 of each;
4. advantages (``losses.split_advantages``): the rationale tokens get the rollout's mean reward normalised
   within the user's G rollouts; each PL ranking gets its reward minus its rollout's mean, so sampling luck
   in the ranking is not credited to the rationales and rationale luck not to the scoring head;
5. loss = -(A_rollout · log-prob of the rationale tokens + A_ranking · log P_PL(ranking | scores))
   + β · KL(policy ‖ SFT ref), the rationale log-prob averaged over the rollout's tokens (GRPO-style);
6. with ``none_weight`` > 0, the same listwise PL term on the user's ``reasoning="none"`` scores, so the
   mode the service offers without rationales is tuned by the same reward instead of drifting;
7. with ``served_users_per_step`` > 0, that many more users get the rationale the service would write (greedy)
   and a listwise term on the scores after it (weight ``served_weight``): the PL term above (``pl``) or the
   exact PL top-1 log-likelihood of the positive (``top1``, lower variance). SFT taught the answer on
   the teacher's rationales; served rationales differ (the model cannot recall every co-occurrence the
   teacher counted), and an answer that trusts them blindly ranks worse than one that also reads the item.
   This term tunes the scoring head on exactly the inputs it meets in serving. A served user costs about a
   quarter of a rollout user (one greedy rationale per candidate instead of G sampled ones, no reference
   pass), so 8 served users cost about as much as 2 rollout users.

The log-probs are those of the re-encoded rationale in the scored sequence, which is what the model
conditions its answer on (sampled and re-encoded ids differ only where the BPE merges differently).
One optimiser step per batch of rollouts (on-policy REINFORCE with group-normalised advantages).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

import torch
from torch import Tensor

from contract.checkpoint import Checkpoint, open_checkpoint
from contract.evidence import Item
from trainer.config import RLConfig
from trainer.data import Catalogue, UserSplit, sample_negatives
from trainer.loop import load_state, optimizer_step, save_state, training_device
from trainer.losses import (
    candidate_advantages,
    kl_k3,
    ndcg_at_k,
    pl_log_likelihood,
    sample_pl_ranking,
    split_advantages,
)
from trainer.policy import grouped_forward, sample_continuations
from trainer.progress import Progress
from trainer.rollouts import VLLMRollouts
from trainer.statistics import carry_stats

logger = logging.getLogger(__name__)

STEP_LOG = "rl_steps.jsonl"


@dataclass(frozen=True)
class RLCase:
    """One user's ranking task: the history (oldest first) and the candidates, as items (id and title)."""

    history: list[Item]
    candidates: list[Item]
    positive: int  # index into candidates


@dataclass
class Prompted:
    """A case turned into token ids by the contract's ``PromptAssembler`` (both modes, one history prefix)."""

    prefix: list[int]
    segments: list[list[int]]  # one per candidate: the candidate segment, ending at "Reasoning:"
    none_segments: list[list[int]]  # one per candidate: the reasoning="none" segment (the cue follows it)
    positive: int


def encode_case(checkpoint: Checkpoint, case: RLCase) -> Prompted:
    full = checkpoint.prompts.prompts(case.history, case.candidates, "full")
    none = checkpoint.prompts.prompts(case.history, case.candidates, "none")
    assert none.prefix.ids == full.prefix.ids, "both modes share the history prefix (the contract)"
    return Prompted(full.prefix.ids, full.segments, none.segments, case.positive)


@dataclass
class StepStats:
    step: int
    loss: float
    reward: float  # mean NDCG@k of the PL-sampled rankings
    ndcg_greedy: float  # NDCG@k of sorting by score (what serving does), same rollouts
    ndcg_none: float | None  # NDCG@k of sorting the reasoning="none" scores (None when none_weight is 0)
    ndcg_served: float | None  # NDCG@k of sorting the scores after greedy rationales (None when off)
    kl: float
    rationale_tokens: float
    score_std: float
    grad_norm: float | None  # before clipping; None when it was not finite
    update_applied: bool  # False: a non-finite gradient, and the step left the weights as they were
    seconds: float = 0.0  # the whole step
    sampling_seconds: float = 0.0  # of which sampling rationales (rollouts and served)


def rl_cases(
    splits: list[UserSplit], catalogue: Catalogue, users: int, negatives: int, seed: int,
    exclude_users: set[str] | frozenset[str] = frozenset(),
) -> list[RLCase]:  # fmt: skip
    """Ranking tasks at the validation position: history = training prefix, positive = the validation item,
    N random negatives outside the user's items. The test item is never a candidate nor in a history, and
    ``exclude_users`` (the selection users, whose validation positions choose between checkpoints) never
    appear."""
    rng = random.Random(seed)
    items = sorted(catalogue.titles)
    pool = [s for s in splits if s.user_id not in exclude_users]
    chosen = rng.sample(pool, min(users, len(pool)))
    item = lambda i: Item(i, catalogue.title(i))  # noqa: E731
    cases = []
    for split in chosen:
        exclude = {*split.train, split.valid_target, split.test_target}
        candidates = [split.valid_target, *sample_negatives(rng, items, exclude, negatives)]
        rng.shuffle(candidates)  # so score ties cannot favour the positive's slot
        history = [item(i) for i in split.train]
        cases.append(RLCase(history, [item(i) for i in candidates], candidates.index(split.valid_target)))
    return cases


class RLTrainer:
    """Holds policy, frozen reference and optimiser; ``step`` does one batch of rollouts and one update."""

    def __init__(
        self, checkpoint: Checkpoint, policy, reference, config: RLConfig, engine: VLLMRollouts | None = None
    ) -> None:
        self.checkpoint = checkpoint
        self.engine = engine
        self.autocast = training_device("rl")[1]
        self.policy = policy
        self.reference = reference
        self.config = config
        self.prompts = checkpoint.prompts
        self.encoder = checkpoint.encoder
        self.pad_id = checkpoint.encoder.pad_token_id
        self.yes, self.no = checkpoint.answer_ids
        self.cue = self.prompts.answer_cue_ids
        self.stop_ids = set(self.prompts.stop_ids)
        self.max_tokens = config.max_rationale_tokens or checkpoint.manifest.max_rationale_tokens
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
        self._sampling_s = 0.0

    def rollouts(
        self, batch: list[Prompted], generator: torch.Generator, G: int | None = None, temperature: float | None = None
    ) -> list[list[list[int]]]:
        """Per user, G·(N+1) rationale id lists (rollout-major), re-encoded as the service scores them.
        Defaults: the config's G and temperature; ``G=1, temperature=0`` gives the served (greedy) rationales."""
        started = time.perf_counter()
        try:
            return self._sample(batch, generator, G, temperature)
        finally:
            self._sampling_s += time.perf_counter() - started

    def _sample(
        self, batch: list[Prompted], generator: torch.Generator, G: int | None, temperature: float | None
    ) -> list[list[list[int]]]:
        G = self.config.rollouts if G is None else G
        temperature = self.config.temperature if temperature is None else temperature
        if self.engine is not None:
            prompts = [p.prefix + segment for p in batch for segment in p.segments]
            per_prompt = iter(self.engine.sample(prompts, G, temperature, self.max_tokens, self.stop_ids))
            sampled = []
            for prompted in batch:
                samples = [next(per_prompt) for _ in prompted.segments]  # (N, G)
                sampled += [samples[i][g] for g in range(G) for i in range(len(prompted.segments))]  # rollout-major
        else:
            self.policy.eval()
            with self.autocast:
                sampled = sample_continuations(
                    self.policy, [p.prefix for p in batch], [p.segments * G for p in batch], self.pad_id,
                    self.stop_ids, self.max_tokens, temperature, generator,
                )  # fmt: skip
        texts = self.encoder.tokenizer.batch_decode(sampled, skip_special_tokens=True)
        segments = self.prompts.rationale_ids(texts)
        out, start = [], 0
        for prompted in batch:
            n = G * len(prompted.segments)
            out.append(segments[start : start + n])
            start += n
        return out

    def score_pass(self, model, batch: list[Prompted], rationales: list[list[list[int]]], G: int | None = None,
                    token_logps: bool = True):  # fmt: skip
        """Forward over prefix + candidate + rationale + cue. Returns per-suffix token log-probs over the
        trailing columns (S, K-1), the mask of the rationale tokens among them, and scores (S,).

        Only the answer position and the rationale tokens are projected onto the vocabulary (rows are padded
        to the longest rationale, so most trailing columns of short rows are neither); ``token_logps=False``
        projects the answer position alone, for a caller that needs the scores only. Positions outside the
        mask hold 0 in the log-probs."""
        G = self.config.rollouts if G is None else G
        suffixes, spans = [], []
        for prompted, group in zip(batch, rationales, strict=True):
            rows = []
            for i, rationale in enumerate(group):
                segment = prompted.segments[i % len(prompted.segments)]
                rows.append(self.prompts.score_input(segment, rationale))
                spans.append((len(segment), len(rationale)))
            suffixes.append(rows)
        assert all(len(r) == G * len(p.segments) for r, p in zip(suffixes, batch, strict=True))
        keep = max(n for _, n in spans) + len(self.cue) + 1  # rationale, cue and the token before them
        packed = grouped_forward(model, [p.prefix for p in batch], suffixes, self.pad_id, logits_to_keep=keep,
                                 project=False)  # fmt: skip
        head = model.get_output_embeddings()
        answer = torch.log_softmax(head(packed.hidden[:, -1]).float(), dim=-1)  # the answer position is last
        scores = answer[:, self.yes] - answer[:, self.no]  # (S,)
        mask = torch.zeros(len(spans), keep - 1, device=scores.device)  # column c predicts suffix column c+1
        cue = len(self.cue)
        for row, (_, n) in enumerate(spans):
            mask[row, keep - 1 - cue - n : keep - 1 - cue] = 1.0  # the rationale's n tokens, before the cue
        token_logp = torch.zeros_like(mask)
        if token_logps:
            rows, columns = mask.nonzero(as_tuple=True)
            targets = packed.suffix_ids[:, -keep + 1 :][rows, columns]
            logp = torch.log_softmax(head(packed.hidden[rows, columns]).float(), dim=-1)
            token_logp = token_logp.index_put((rows, columns), logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
        return token_logp, mask, scores

    def none_scores(self, model, batch: list[Prompted]) -> torch.Tensor:
        """reasoning="none" scores, (sum of N,): prompt + cue, the answer position last (as ``score_pass``
        without the rationale)."""
        suffixes = [[self.prompts.score_input(segment) for segment in p.none_segments] for p in batch]
        packed = grouped_forward(model, [p.prefix for p in batch], suffixes, self.pad_id, logits_to_keep=1)
        logp = torch.log_softmax(packed.logits[:, -1].float(), dim=-1)
        return logp[:, self.yes] - logp[:, self.no]

    def _listwise(self, scores: torch.Tensor, positive: int, samples: int, generator: torch.Generator):
        """PL rankings of scores (G, N), ``samples`` per row; returns rewards (G, M), their PL
        log-likelihoods (G, M) and the NDCG@k of sorting by score (G,)."""
        G, n = scores.shape
        relevance = torch.zeros(G, samples, n, device=scores.device)
        relevance[..., positive] = 1.0
        expanded = scores.unsqueeze(1).expand(G, samples, n)
        ranking = sample_pl_ranking(expanded, generator)  # (G, M, N)
        rewards = ndcg_at_k(ranking, relevance, self.config.k)  # (G, M)
        sorted_order = torch.argsort(scores.detach(), -1, descending=True)
        greedy = ndcg_at_k(sorted_order, relevance[:, 0], self.config.k)  # (G,)
        return rewards, pl_log_likelihood(expanded, ranking), greedy

    def _served_parts(self, batch: list[Prompted], generator: torch.Generator, ndcgs: list[float]) -> Iterator[Tensor]:
        """Per served user, its share of the listwise term on the scores after the rationales the service would
        write (greedy); appends the NDCG@k of sorting by those scores to ``ndcgs``."""
        rationales = self.rollouts(batch, generator, G=1, temperature=0.0)
        self.policy.train()
        for prompted, rationale in zip(batch, rationales, strict=True):
            with self.autocast:
                _, _, scores = self.score_pass(self.policy, [prompted], [rationale], G=1, token_logps=False)
            user = scores.unsqueeze(0)  # (1, N)
            rewards, pl, greedy = self._listwise(user, prompted.positive, self.config.pl_samples, generator)
            if self.config.served_objective == "top1":  # the exact gradient of the PL top-1 log-likelihood
                term = -torch.log_softmax(user[0], -1)[prompted.positive]
            else:
                term = -(split_advantages(rewards)[1] * pl).mean()
            ndcgs.append(float(greedy.mean()))
            yield self.config.served_weight * term / len(batch)

    def _user_parts(
        self, batch: list[Prompted], rationales: list[list[list[int]]], generator: torch.Generator, stats: list[dict]
    ) -> Iterator[Tensor]:
        """Per rollout user, its share of the loss; appends the user's figures (reward, NDCG, KL...) to ``stats``."""
        config = self.config
        G = config.rollouts
        self.policy.train()
        for prompted, group in zip(batch, rationales, strict=True):
            n = len(prompted.segments)
            with self.autocast:
                token_logp, mask, scores = self.score_pass(self.policy, [prompted], [group])
                none_scores = self.none_scores(self.policy, [prompted]) if config.none_weight > 0 else None
                with torch.no_grad():
                    ref_logp, _, _ = self.score_pass(self.reference, [prompted], [group])
            user_scores = scores.view(G, n)  # (G, N)
            rewards, pl, greedy = self._listwise(user_scores, prompted.positive, config.pl_samples, generator)
            rationale_adv, ranking_adv = split_advantages(rewards)  # (G,), (G, M)
            tokens = mask.view(G, n, -1)
            token_sums = (token_logp.view(G, n, -1) * tokens).sum(-1)  # (G, N)
            if config.rationale_credit == "candidate":  # each rationale: its own effect on the list reward
                credit = candidate_advantages(user_scores, prompted.positive, config.k, config.pl_samples, generator)
                rationale_term = (credit * token_sums / tokens.sum(-1).clamp_min(1)).mean()
            else:
                # per rollout: mean log-prob over all its rationale tokens (GRPO-style length normalisation
                # keeps hundreds of token terms from drowning the scoring head's PL term under gradient clipping)
                rationale_logp = token_sums.sum(-1) / tokens.sum((1, 2)).clamp_min(1)
                rationale_term = (rationale_adv * rationale_logp).mean()
            kl = kl_k3(token_logp, ref_logp, mask)  # (G·N,)
            loss = -rationale_term - (ranking_adv * pl).mean() + config.beta * kl.mean()
            none_ndcg = None
            if none_scores is not None:
                none_rewards, none_pl, none_greedy = self._listwise(none_scores.unsqueeze(0), prompted.positive,
                                                                    config.pl_samples, generator)  # fmt: skip
                loss = loss - config.none_weight * (split_advantages(none_rewards)[1] * none_pl).mean()
                none_ndcg = float(none_greedy.mean())
            stats.append({"reward": float(rewards.mean()), "greedy": float(greedy.mean()), "none": none_ndcg,
                          "kl": float(kl.detach().mean()), "length": float(mask.sum(-1).mean()),
                          "std": float(user_scores.detach().std())})  # fmt: skip
            yield loss / len(batch)

    def step(self, step: int, cases: list[RLCase], served_cases: list[RLCase] = ()) -> StepStats:
        """One update: G rollouts for each of ``cases``; the served-rationale term for ``served_cases``.

        Rationales are sampled for all users at once (one decoding loop), but the passes that carry gradients
        run user by user, each backpropagated before the next: users' histories differ in length by up to
        ten times, so one padded pass over all of them would be mostly padding. The gradient is the same."""
        config = self.config
        started, self._sampling_s = time.perf_counter(), 0.0
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        batch = [encode_case(self.checkpoint, c) for c in cases]
        rationales = self.rollouts(batch, generator)
        served = [encode_case(self.checkpoint, c) for c in served_cases] if config.served_weight > 0 else []
        served_ndcgs: list[float] = []
        users: list[dict] = []
        parts = chain(self._served_parts(served, generator, served_ndcgs) if served else (),
                      self._user_parts(batch, rationales, generator, users))  # fmt: skip
        outcome = optimizer_step(self.policy, self.optimizer, parts)
        if self.engine is not None and outcome.applied:
            self.engine.sync(self.policy)  # the next rollouts sample from the updated policy
        mean = lambda key: sum(u[key] for u in users) / len(users)  # noqa: E731
        none_ndcg = mean("none") if config.none_weight > 0 else None
        served_ndcg = sum(served_ndcgs) / len(served_ndcgs) if served_ndcgs else None
        return StepStats(step, outcome.loss, mean("reward"), mean("greedy"), none_ndcg, served_ndcg, mean("kl"),
                         mean("length"), mean("std"), outcome.grad_norm if outcome.applied else None,
                         outcome.applied, time.perf_counter() - started, self._sampling_s)  # fmt: skip


def _window_mean(records: list[dict], key: str) -> float | None:
    """Mean of an optional per-step figure over a log window, or None when the term was disabled."""
    values = [r[key] for r in records if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def _use_vllm_rollouts(rollout_engine: str, device: torch.device) -> bool:
    """``vllm`` always (failing loudly where vLLM is missing); ``auto`` on a GPU where vLLM is installed, else
    the torch sampler, with a warning on a GPU, where vLLM would be the fast path."""
    if rollout_engine != "auto":
        return rollout_engine == "vllm"
    if device.type != "cuda":
        return False
    if importlib.util.find_spec("vllm") is None:
        logger.warning("vLLM is not installed: RL samples rationales with torch (slower on a GPU)")
        return False
    return True


def train_rl(base: Path, out: Path, cases: list[RLCase], config: RLConfig) -> dict:
    """RL-tune ``base`` (an SFT checkpoint, also the KL reference) into ``out/model``; resumable."""
    from trainer.attention import load_causal_lm

    checkpoint = open_checkpoint(base)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    resumed = state_path.exists()
    start_from = out / "model" if resumed else base
    device, _ = training_device("rl")
    policy = load_causal_lm(start_from, device)
    reference = load_causal_lm(base, device).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    engine = None
    if _use_vllm_rollouts(config.rollout_engine, device):
        engine = VLLMRollouts(start_from, dtype="bfloat16" if device.type == "cuda" else "float32")
    trainer = RLTrainer(checkpoint, policy, reference, config, engine)
    step, log = 0, []
    state = load_state(state_path, trainer.optimizer)
    if state is not None:
        step, log = state["step"], state["log"]
        logger.info("resumed RL at step %d", step)
    order = list(range(len(cases)))
    random.Random(config.seed).shuffle(order)
    last = min(config.steps, config.stop_after or config.steps)
    per_step = config.users_per_step + config.served_users_per_step
    progress = Progress("rl", config.steps, out / STEP_LOG, done=step, shown=(
        "reward_last10", "ndcg_greedy_last10", "ndcg_served_last10", "kl", "rationale_tokens"))  # fmt: skip
    while step < last:
        start = (step * per_step) % len(order)
        picked = [cases[order[(start + i) % len(order)]] for i in range(per_step)]
        stats = trainer.step(step, picked[: config.users_per_step], picked[config.users_per_step :])
        log.append(asdict(stats))
        step += 1
        windowed = {f"{k}_last10": _window_mean(log[-10:], k) for k in ("reward", "ndcg_greedy", "ndcg_served")}
        progress.update(step, **{k: v for k, v in log[-1].items() if k != "step"}, **windowed)
        if step % config.checkpoint_every == 0 or step == last:
            policy.save_pretrained(out / "model", safe_serialization=True)
            save_state(state_path, trainer.optimizer, step, log=log)
    checkpoint.encoder.tokenizer.save_pretrained(out / "model")
    carry_stats(base, out / "model")
    window = max(1, min(20, len(log) // 4))
    summary = {
        "stage": "rl",
        "config": asdict(config),
        "steps_done": len(log),
        "reward_first": sum(r["reward"] for r in log[:window]) / window,
        "reward_last": sum(r["reward"] for r in log[-window:]) / window,
        "kl_last": sum(r["kl"] for r in log[-window:]) / window,
        "skipped_updates": sum(not r.get("update_applied", True) for r in log),
    }
    (out / "rl_log.json").write_text(json.dumps({"log": log, **summary}, indent=2))
    return summary
