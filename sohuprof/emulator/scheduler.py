"""Continuous batching: each replica's scheduler forms every step from decode tokens and
chunked prefill under a token budget and the KV-cache capacity left after the weights.

State lives in arrays over the replica's requests, so forming a step is a few vector operations
whatever the number of requests in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sohuprof.strace import Phase

__all__ = ["Batch", "ReplicaScheduler"]


@dataclass(frozen=True)
class Batch:
    """What one replica runs in one step."""

    tokens: int        # prefill chunk tokens + decode tokens
    pairs: float       # attention (query, key) pairs
    kv_read: int       # KV-cache tokens read
    samples: int       # sequences that produce a token
    prefill_tokens: int
    decode_tokens: int
    phase: Phase
    chunk: np.ndarray   # [n] prefill tokens granted per request (0 if none)
    decoding: np.ndarray  # [n] bool, request decodes this step

    @property
    def empty(self) -> bool:
        return self.tokens == 0


class ReplicaScheduler:
    """Scheduler of one model replica over the requests routed to it.

    Admission reserves a request's whole KV footprint (prompt + output) up front, so a running
    request is never preempted; chunked prefill fills the step's budget after the decodes.
    """

    def __init__(self, arrival_ns: np.ndarray, prompt: np.ndarray, output: np.ndarray, *,
                 max_batch_tokens: int, max_seqs: int, kv_capacity_tokens: int) -> None:
        self.arrival = arrival_ns.astype(np.float64)
        self.prompt = prompt.astype(np.int64)
        self.output = output.astype(np.int64)
        n = len(arrival_ns)
        self.prefilled = np.zeros(n, np.int64)
        self.generated = np.zeros(n, np.int64)
        self.admitted = np.zeros(n, bool)
        self.done = np.zeros(n, bool)
        self.first_token_ns = np.full(n, np.nan)
        self.finish_ns = np.full(n, np.nan)
        self.max_batch_tokens = max_batch_tokens
        self.max_seqs = max_seqs
        self.kv_capacity = kv_capacity_tokens

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def next_arrival(self, now: float) -> float:
        """Earliest arrival of a request not yet admitted, at or after nothing is runnable."""
        waiting = ~self.admitted
        return float(self.arrival[waiting].min()) if waiting.any() else now

    def has_runnable(self, now: float) -> bool:
        return bool((self.admitted & ~self.done).any() or (~self.admitted & (self.arrival <= now)).any())

    def form(self, now: float) -> Batch:
        """Form the step starting at ``now`` (ns); does not change state until :meth:`complete`."""
        running = self.admitted & ~self.done
        prefilling = running & (self.prefilled < self.prompt)
        decoding = running & ~prefilling
        n_decode = int(decoding.sum())
        # Admit arrived requests first-come first-served while KV space and sequence slots last.
        waiting = np.flatnonzero(~self.admitted & (self.arrival <= now))
        kv_used = int((self.prompt + self.output)[running].sum())
        need = np.cumsum((self.prompt + self.output)[waiting])
        slots = self.max_seqs - int(running.sum())
        admit = waiting[(need <= self.kv_capacity - kv_used) & (np.arange(len(waiting)) < slots)]
        # Chunked prefill: in-flight prefills by arrival order, then the newly admitted.
        order = np.concatenate([np.flatnonzero(prefilling), admit])
        remaining = self.prompt[order] - self.prefilled[order]
        budget = max(self.max_batch_tokens - n_decode, 0)
        before = np.concatenate([[0], np.cumsum(remaining)[:-1]])
        grant = np.clip(budget - before, 0, remaining)
        chunk = np.zeros(len(self.prompt), np.int64)
        chunk[order] = grant
        self._admit = admit[chunk[admit] > 0]
        done_before = self.prefilled
        ctx = self.prompt + self.generated  # decode context: prompt and tokens so far
        pairs = float((chunk * done_before + chunk * (chunk + 1) / 2).sum() + (ctx[decoding]).sum())
        kv_read = int(done_before[chunk > 0].sum() + (ctx[decoding] - 1).sum())
        completes = (chunk > 0) & (done_before + chunk == self.prompt)
        n_prefill = int(chunk.sum())
        phase = Phase.MIXED if (n_prefill and n_decode) else (Phase.PREFILL if n_prefill else Phase.DECODE)
        return Batch(tokens=n_prefill + n_decode, pairs=pairs, kv_read=kv_read,
                     samples=int(completes.sum()) + n_decode, prefill_tokens=n_prefill,
                     decode_tokens=n_decode, phase=phase, chunk=chunk, decoding=decoding)

    def complete(self, batch: Batch, end_ns: float) -> tuple[np.ndarray, np.ndarray]:
        """Apply ``batch``, finished at ``end_ns``; return the requests that got their first token
        and those that finished."""
        self.admitted[self._admit] = True
        was_prefilling = self.prefilled < self.prompt
        self.prefilled += batch.chunk
        first = was_prefilling & (self.prefilled == self.prompt) & (batch.chunk > 0)
        self.generated[first] = 1
        self.generated[batch.decoding] += 1
        self.first_token_ns[first] = end_ns
        newly_done = ~self.done & self.admitted & (self.prefilled == self.prompt) & (self.generated >= self.output)
        self.done |= newly_done
        self.finish_ns[newly_done] = end_ns
        return np.flatnonzero(first), np.flatnonzero(newly_done)
