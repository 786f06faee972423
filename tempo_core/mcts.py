"""Monte Carlo tree search over threshold-selected candidates (PUCT, as in AlphaZero).

Each logical step runs `mcts_simulations` simulations from the committed prefix: descend by
Q + c_puct * P * sqrt(N_parent) / (1 + N_child) to at most `mcts_depth` tokens, expand the leaf with one
forward pass (its children are the tokens passing the selection threshold, priors = their probabilities),
score it by the geometric-mean probability of the path (the model's own token probabilities), and back the
value up. The most visited child is committed; its subtree is kept for the next step. Visit counts and values
of every root child are recorded in the trace (the unchosen ones as pruned at that step).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from transformers import DynamicCache

from .config import TempoSettings
from .events import StepEvent, new_trace
from .model import LoadedModel
from .selection import select_candidates, to_probs
from .stop import stop_reason
from .text import finalise_text
from .trace import Candidate, Step, summarise


@dataclass
class Node:
    token: int
    prior: float  # probability of `token` under the parent's distribution
    log_path: float = 0.0  # sum of log-probabilities from the root's children down to this node
    depth: int = 0
    visits: int = 0
    value_sum: float = 0.0
    dist: torch.Tensor | None = None  # next-token distribution after this node (None = not expanded)
    children: list["Node"] = field(default_factory=list)
    terminal: bool = False

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


class MctsSearch:
    def __init__(self, lm: LoadedModel, s: TempoSettings, prompt_ids: list[int]):
        self.lm, self.s = lm, s
        self.cache = DynamicCache(config=lm.model.config)
        self.committed = list(prompt_ids)
        self.forward_passes = 0
        self.tokens_processed = 0
        logits = self._forward(self.committed, 0)
        self.root = Node(token=-1, prior=1.0)
        self._expand(self.root, to_probs(logits, s.temperature))

    def _forward(self, ids: list[int], start: int) -> torch.Tensor:
        dev = self.lm.device
        with torch.inference_mode():
            out = self.lm.forward(input_ids=torch.tensor([ids], device=dev),
                                  position_ids=torch.arange(start, start + len(ids), device=dev)[None],
                                  cache=self.cache, use_cache=True, logits_to_keep=1)
        self.forward_passes += 1
        self.tokens_processed += len(ids)
        return out.logits[0, -1]

    def _expand(self, node: Node, dist: torch.Tensor) -> None:
        node.dist = dist
        if node.terminal:
            return
        ids, ps = select_candidates(dist, self.s.selection_threshold, self.s.max_parallel_tokens)
        node.children = [Node(i, p, node.log_path + math.log(max(p, 1e-12)), node.depth + 1,
                              terminal=i in self.lm.eos_ids) for i, p in zip(ids, ps)]

    def _leaf_dist(self, path: list[Node]) -> torch.Tensor:
        """Distribution after the path, computed on top of the committed cache and rolled back."""
        tokens = [n.token for n in path]
        logits = self._forward(tokens, len(self.committed))
        self.cache.crop(-len(tokens))
        return to_probs(logits, self.s.temperature)

    def _select(self, node: Node) -> Node:
        sqrt_n = math.sqrt(max(1, node.visits))
        # an unvisited child starts at its parent's value ("first-play urgency"), so priors steer exploration
        return max(node.children, key=lambda c: (c.q if c.visits else node.q)
                   + self.s.mcts_c_puct * c.prior * sqrt_n / (1 + c.visits))

    def simulate(self) -> None:
        node, path = self.root, []
        while node.children and len(path) < self.s.mcts_depth:
            node = self._select(node)
            path.append(node)
        if node.dist is None and not node.terminal and path:
            self._expand(node, self._leaf_dist(path))
        value = math.exp(node.log_path / max(1, node.depth))  # geometric-mean token probability of the path
        for n in [self.root] + path:
            n.visits += 1
            n.value_sum += value

    def commit(self, child: Node) -> None:
        """Make `child` the new root (keeping its subtree) and feed its token into the real cache."""
        logits = self._forward([child.token], len(self.committed))  # the KV of the committed path stays
        self.committed.append(child.token)
        if child.dist is None:  # never expanded during search: its distribution comes with this forward
            self._expand(child, to_probs(logits, self.s.temperature))
        shift = child.log_path

        def rebase(n: Node) -> None:
            n.log_path -= shift
            n.depth -= 1
            for c in n.children:
                rebase(c)
        rebase(child)
        self.root = child


PIECE_S = 0.25  # cooperative: simulations between two yields, so a server's other runs take their turns


def mcts_events(lm: LoadedModel, s: TempoSettings, stop: threading.Event | None = None,
                cooperative: bool = False) -> Iterator[StepEvent]:
    """MCTS decoding, an event per committed token. `cooperative`: also a progress event whenever a step's
    simulations have run PIECE_S seconds, so one step of many simulations does not hold a shared model thread."""
    trace = new_trace(lm, s)
    t0 = time.perf_counter()
    search = MctsSearch(lm, s, trace.prompt_token_ids)
    trace.timings["prefill_ms"] = (time.perf_counter() - t0) * 1e3
    trace.stop_reason = "max_tokens"
    prompt_len = len(trace.prompt_token_ids)
    for step in range(s.max_tokens):
        if stop is not None and stop.is_set():
            trace.stop_reason = stop_reason(stop)
            break
        ts = piece = time.perf_counter()
        for i in range(s.mcts_simulations):
            if stop is not None and stop.is_set():  # a step of many simulations can be long: stop inside it
                break
            search.simulate()
            if cooperative and time.perf_counter() - piece > PIECE_S and i + 1 < s.mcts_simulations:
                yield StepEvent(len(trace.steps) - 1, trace, [],
                                progress=f"searching step {step + 1}: {i + 1} of {s.mcts_simulations} simulations")
                piece = time.perf_counter()
        if stop is not None and stop.is_set():
            trace.stop_reason = stop_reason(stop)
            break
        root = search.root
        options = sorted(root.children, key=lambda c: (c.visits, c.prior), reverse=True)
        may_stop = step >= s.min_steps
        chosen = next((c for c in options if not c.terminal or may_stop), None)
        if chosen is None or (chosen.terminal and may_stop):
            trace.stop_reason = "eos"
            break
        cands = [Candidate(c.token, lm.decode([c.token]), c.prior, row=prompt_len + step if c is chosen else -1,
                           pruned_at=None if c is chosen else step, visits=c.visits, value=c.q)
                 for c in sorted(root.children, key=lambda c: -c.prior)]
        search.commit(chosen)
        trace.steps.append(Step(step, prompt_len + step, s.selection_threshold, None, cands,
                                time_ms=(time.perf_counter() - ts) * 1e3))
        _stats(trace, search, t0)
        finalise_text(trace, lm.decode, s.show_token_ids)
        yield StepEvent(step, trace, [])
    _stats(trace, search, t0)
    finalise_text(trace, lm.decode, s.show_token_ids)
    yield StepEvent(len(trace.steps) - 1, trace, [], done=True)


def _stats(trace, search: MctsSearch, t0: float) -> None:
    summarise(trace, (time.perf_counter() - t0) * 1e3, search.forward_passes, search.tokens_processed,
              len(trace.steps))
