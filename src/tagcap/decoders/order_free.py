"""Order-free RNN (Chen et al. 2018): no fixed label order. A candidate pool holds the image's
true labels not yet emitted; at each step the target is the pool label the model currently
scores highest, which is fed back and removed from the pool; STOP once the pool is empty."""

import torch
import torch.nn.functional as F

from tagcap.decoders.base import register
from tagcap.decoders.recurrent import SequenceDecoder


def pool_targets(logits: torch.Tensor, pool: torch.Tensor, stop: int) -> torch.Tensor:
    """The step's targets: per image, the label still in its pool that the model scores highest,
    or STOP when its pool is empty."""
    in_pool = logits[:, : pool.shape[1]].detach().masked_fill(~pool, float("-inf"))
    return torch.where(pool.any(1), in_pool.argmax(1), torch.full((len(pool),), stop, dtype=torch.long, device=pool.device))


@register("order-free")
class OrderFreeRNN(SequenceDecoder):
    def loss(self, features, targets):
        pool = targets > 0.5                          # [B, C] labels still to emit
        state = self.init_state(features)
        tokens = torch.full((len(targets),), self.start, dtype=torch.long, device=targets.device)
        alive = torch.ones(len(targets), dtype=torch.bool, device=targets.device)  # has not yet been asked for STOP
        total, count = 0.0, 0
        for _ in range(int(pool.sum(1).max()) + 1):
            logits, state = self.step(tokens, state)
            target = pool_targets(logits, pool, self.stop)
            if alive.any():
                total = total + F.cross_entropy(logits[alive], target[alive], reduction="sum")
                count += int(alive.sum())
            alive = alive & (target != self.stop)
            pool = pool.clone()
            pool[torch.arange(len(pool), device=pool.device), target.clamp(max=self.num_labels - 1)] &= target == self.stop
            tokens = target.clamp(max=self.num_labels - 1)
        return total / max(count, 1)
