"""Where every token sits: physical rows of the ONE sequence, their shared logical positions, and the mask.

Rules (default, siblings isolated):
  * every candidate of logical step s is fed at position id `prompt_len + s`;
  * a candidate sees the prompt, every live row of earlier steps, and itself, not its siblings;
  * a pruned row is hidden from every later query.
With `allow_intraset_token_visibility` the siblings of one set also see each other.
With `shared_positions` off (the seeds' `--use-custom-rope` turned off: a research baseline), the siblings get
consecutive position ids instead, as if they were written one after another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Layout:
    prompt_len: int
    alive: list[bool] = field(default_factory=list)  # one entry per physical row
    positions: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    # for each logical step: (first row, number of rows, rows hidden from that step's queries)
    blocks: list[tuple[int, int, list[int]]] = field(default_factory=list)
    shared_positions: bool = True

    @classmethod
    def for_prompt(cls, prompt_ids: list[int], shared_positions: bool = True) -> "Layout":
        n = len(prompt_ids)
        return cls(n, [True] * n, list(range(n)), list(prompt_ids), shared_positions=shared_positions)

    def next_position(self, step: int) -> int:
        """The position id of logical `step`'s set (its first row's, when positions are not shared)."""
        return self.prompt_len + step if self.shared_positions else self.positions[-1] + 1

    @property
    def rows(self) -> int:
        return len(self.alive)

    def dead_rows(self) -> list[int]:
        return [i for i, a in enumerate(self.alive) if not a]

    def append_set(self, token_ids: list[int], position: int) -> list[int]:
        """Add one logical step's candidates; returns their physical rows."""
        start = self.rows
        self.blocks.append((start, len(token_ids), self.dead_rows()))
        self.alive += [True] * len(token_ids)
        offsets = [0] * len(token_ids) if self.shared_positions else list(range(len(token_ids)))
        self.positions += [position + o for o in offsets]
        self.tokens += list(token_ids)
        return list(range(start, start + len(token_ids)))

    def kill(self, row: int) -> None:
        self.alive[row] = False


def step_mask(past_alive: list[bool], k: int, intraset_visible: bool, device: torch.device) -> torch.Tensor:
    """[1, 1, k, P + k] boolean mask (True = may attend) for k new siblings over P cached rows.

    Built on the CPU and moved in one copy: on a GPU a step is launch-bound, so fewer small kernels matter.
    """
    past = torch.tensor(past_alive, dtype=torch.bool).expand(k, -1)
    block = torch.ones(k, k, dtype=torch.bool) if intraset_visible else torch.eye(k, dtype=torch.bool)
    return torch.cat([past, block], dim=1)[None, None].to(device, non_blocking=True)


def full_mask(layout: Layout, intraset_visible: bool, device: torch.device) -> torch.Tensor:
    """[1, 1, N, N] mask reproducing, for every row, exactly what it was allowed to see when it was fed.

    Used by the no-KV-cache path, which must give the cached path's candidates.
    """
    n = layout.rows
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    p = layout.prompt_len
    mask[:p, :p] = torch.ones(p, p, dtype=torch.bool, device=device).tril()
    for start, k, hidden in layout.blocks:
        mask[start:start + k, :start] = True
        if hidden:
            mask[start:start + k, hidden] = False
        if intraset_visible:
            mask[start:start + k, start:start + k] = True
        else:
            idx = torch.arange(start, start + k, device=device)
            mask[idx, idx] = True
    return mask[None, None]
