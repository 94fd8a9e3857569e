"""Continuous batching: each replica's scheduler forms every step from decode tokens and
chunked prefill under a token budget and the KV-cache capacity left after the weights.

KV blocks are taken as tokens arrive, as vLLM does: admission needs room for a request's first
chunk only, and when the running requests' next tokens do not fit, the newest are preempted (their
KV freed, recomputed later from their prompt and the tokens they had generated). A shared system
prompt (prefix caching) is computed once per replica and then reused: a later request's prefill
starts after it, and its KV is held once. With speculative decoding (MTP) a decoding sequence
verifies ``1 + spec_tokens`` tokens a step and keeps 1 + the accepted drafts.

State lives in arrays over the replica's requests, so forming a step is a few vector operations
whatever the number of requests in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sohuprof.strace import Phase

__all__ = ["Batch", "ReplicaScheduler", "accepted_drafts"]


@dataclass(frozen=True)
class Batch:
    """What one replica runs in one step."""

    tokens: int        # prefill chunk tokens + decode tokens (verified drafts included)
    pairs: float       # attention (query, key) pairs
    kv_read: int       # KV-cache tokens read
    samples: int       # positions the head samples (verified drafts included)
    prefill_tokens: int
    decode_tokens: int
    phase: Phase
    chunk: np.ndarray   # [n] prefill tokens granted per request (0 if none)
    decoding: np.ndarray  # [n] bool, request decodes this step
    prefill_pairs: float = 0.0  # the attention pairs of prefill chunks
    prefill_context: int = 0    # tokens prefill chunks attend to (cached context + the chunk)
    draft_tokens: int = 0       # tokens the draft head proposes for the next verification
    preempted: int = 0          # requests preempted when this step was formed

    @property
    def empty(self) -> bool:
        return self.tokens == 0


def accepted_drafts(rng: np.random.Generator, n: int, k: int, accept: float) -> np.ndarray:
    """Accepted drafts of ``n`` verifications of ``k`` drafts each: draft ``i`` is kept when it
    and all before it are accepted, each with probability ``accept`` (so the expectation is
    ``sum(accept**i, i=1..k)``); one vectorized draw."""
    if k == 0 or n == 0:
        return np.zeros(n, np.int64)
    if accept >= 1.0:
        return np.full(n, k, np.int64)
    if accept <= 0.0:
        return np.zeros(n, np.int64)
    # Successes before the first failure: geometric(1 - accept) - 1, P(>= i) = accept**i.
    return np.minimum(rng.geometric(1.0 - accept, n) - 1, k).astype(np.int64)


class ReplicaScheduler:
    """Scheduler of one model replica over the requests routed to it.

    Parameters
    ----------
    arrival_ns, prompt, output : numpy.ndarray
        Per request: arrival (ns) and prompt and output tokens.
    max_batch_tokens, max_seqs, kv_capacity_tokens : int
        The step's token budget, the sequences in flight, the KV-cache tokens.
    prefix_len : int, default 0
        Tokens of a system prompt every prompt opens with (cached once computed).
    spec_tokens, spec_accept : int, float
        Drafts verified per decode step and the acceptance probability of each.
    rng : numpy.random.Generator, optional
        Draws the accepted drafts (needed when ``spec_tokens > 0``).
    transferred : bool, default False
        A decode replica of disaggregated serving: each request arrives (:meth:`receive`) with
        its prompt's KV computed elsewhere and its first token sampled; it needs KV room for
        its prompt to be admitted, and decodes from its first step.
    """

    def __init__(self, arrival_ns: np.ndarray, prompt: np.ndarray, output: np.ndarray, *,
                 max_batch_tokens: int, max_seqs: int, kv_capacity_tokens: int, prefix_len: int = 0,
                 spec_tokens: int = 0, spec_accept: float = 0.0, rng: np.random.Generator | None = None,
                 transferred: bool = False) -> None:
        self.arrival = arrival_ns.astype(np.float64)
        self.prompt = prompt.astype(np.int64)
        self.output = output.astype(np.int64)
        n = len(arrival_ns)
        self.target = self.prompt.copy()        # tokens to prefill: the prompt, or all so far after a preemption
        self.prefilled = np.zeros(n, np.int64)
        self.generated = np.zeros(n, np.int64)
        self.shared = np.zeros(n, np.int64)     # prefix tokens reused from the cache
        self.admitted = np.zeros(n, bool)
        self.done = np.zeros(n, bool)
        self.admit_seq = np.zeros(n, np.int64)  # admission order: the newest are preempted first
        self.preempted = np.zeros(n, bool)      # waiting again after a preemption (first in line)
        self.first_token_ns = np.full(n, np.nan)
        self.finish_ns = np.full(n, np.nan)
        if transferred:
            self.prefilled[:] = self.prompt
            self.generated[:] = 1
            self.done[:] = self.output <= 1     # finished where they were prefilled
        self.max_batch_tokens = max_batch_tokens
        self.max_seqs = max_seqs
        self.kv_capacity = kv_capacity_tokens
        self.prefix_len = prefix_len
        self.prefix_cached = False
        self.spec_tokens = spec_tokens
        self.spec_accept = spec_accept
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.preemptions = 0
        self.decode_steps = 0    # (sequence, decode step) pairs
        self.decode_emitted = 0  # tokens those steps emitted
        self.hit_tokens = 0      # prompt tokens served from the prefix cache
        self.query_tokens = 0    # prompt tokens looked up (every admission)
        self._next_seq = 0

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def next_arrival(self, now: float) -> float:
        """Earliest arrival of a request not yet admitted, at or after nothing is runnable."""
        waiting = ~self.admitted & ~self.done
        return float(self.arrival[waiting].min()) if waiting.any() else now

    def has_runnable(self, now: float) -> bool:
        return bool((self.admitted & ~self.done).any() or (~self.admitted & ~self.done & (self.arrival <= now)).any())

    def receive(self, idx: np.ndarray, arrival_ns: np.ndarray) -> None:
        """Requests ``idx`` arrive at ``arrival_ns`` (their KV, under disaggregated serving)."""
        self.arrival[idx] = arrival_ns

    def kv_used(self) -> int:
        """KV-cache tokens held now: each running request's own tokens and the cached prefix once."""
        running = self.admitted & ~self.done
        return int(self._held()[running].sum()) + self.prefix_len * self.prefix_cached

    def _held(self) -> np.ndarray:
        """Tokens each request holds in the KV cache beyond the shared prefix (running ones)."""
        prefilling = self.prefilled < self.target
        held = np.where(prefilling, self.prefilled, self.prompt + self.generated - 1)
        return held - self.shared

    def form(self, now: float) -> Batch:
        """Form the step starting at ``now`` (ns); does not change state until :meth:`complete`."""
        k = self.spec_tokens
        running = self.admitted & ~self.done
        prefilling = running & (self.prefilled < self.target)
        decoding = running & ~prefilling
        held = self._held()
        # In-flight prefills take the budget the decodes leave, oldest admission first.
        budget = max(self.max_batch_tokens - int(decoding.sum()) * (k + 1), 0)
        inflight = np.flatnonzero(prefilling)
        inflight = inflight[np.argsort(self.admit_seq[inflight], kind="stable")]
        grant = _fill(budget, self.target[inflight] - self.prefilled[inflight])
        growth = np.zeros(len(self.prompt), np.int64)
        growth[inflight] = grant
        growth[decoding] = k + 1
        # Preempt the newest running requests until the others' next tokens fit.
        prefix = self.prefix_len * self.prefix_cached
        run_idx = np.flatnonzero(running)
        need = held[run_idx] + growth[run_idx]
        excess = int(need.sum()) + prefix - self.kv_capacity
        preempt = np.zeros(0, np.int64)
        if excess > 0:
            newest = run_idx[np.argsort(-self.admit_seq[run_idx], kind="stable")]
            freed = np.cumsum(held[newest] + growth[newest])
            preempt = newest[: int(np.searchsorted(freed, excess)) + 1]
            prefilling[preempt] = decoding[preempt] = False
            growth[preempt] = 0
        # Admission (only in a step that preempted nobody, as vLLM): waiting requests, the
        # preempted first, then by arrival, while slots, budget and KV space for their first
        # chunk last; first come first served, nobody overtakes.
        admit = np.zeros(0, np.int64)
        self._ready = np.zeros(0, bool)
        start = self.prefilled.copy()
        shared_new = np.zeros(0, np.int64)
        if not len(preempt):
            waiting = np.flatnonzero(~self.admitted & ~self.done & (self.arrival <= now))
            waiting = waiting[np.lexsort((waiting, self.arrival[waiting], ~self.preempted[waiting]))]
            waiting = waiting[: max(self.max_seqs - int(running.sum()), 0)]
            # Requests that arrive with their KV (disaggregated prefill) need room for it and
            # their k + 1 decode tokens of the budget, whole: they decode at once.
            ready = self.prefilled[waiting] >= self.target[waiting]
            shared_new = np.where(ready, 0, self.prefix_len if self.prefix_cached else 0).astype(np.int64)
            left = max(budget - int(grant.sum()), 0)
            first = _fill(left, np.where(ready, k + 1, self.target[waiting] - shared_new))
            kv_new = np.where(ready, self.prefilled[waiting] + k + 1, first)
            room = self.kv_capacity - (int(need.sum()) + prefix)
            fits = (np.cumsum(kv_new) <= room) & np.where(ready, first == k + 1, first > 0)
            if len(fits) and ready[0] and not running.any() and kv_new[0] <= room:
                fits[0] = True   # alone, its verification may pass a budget under k + 1 (as decodes do)
            n_ok = int(np.argmin(fits)) if not fits.all() else len(fits)   # stop at the first that does not fit
            admit, shared_new, ready = waiting[:n_ok], shared_new[:n_ok], ready[:n_ok]
            fresh = admit[~ready]
            growth[fresh] = first[:n_ok][~ready]
            start[fresh] = shared_new[~ready]
            prefilling[fresh] = True
            decoding[admit[ready]] = True
            growth[admit[ready]] = k + 1
            self._ready = ready
        chunk = np.where(prefilling, growth, 0)
        self._admit, self._shared_new, self._preempt = admit, shared_new, preempt
        n_decode = int(decoding.sum())
        ctx = self.prompt + self.generated  # decode context: prompt and tokens so far
        prefill_pairs = float((chunk * start + chunk * (chunk + 1) / 2).sum())
        # Each of a sequence's k + 1 verified positions attends to the context and the drafts before it.
        decode_pairs = float((k + 1) * ctx[decoding].sum() + n_decode * k * (k + 1) / 2)
        kv_read = int(start[chunk > 0].sum() + (ctx[decoding] - 1).sum())
        completes = (chunk > 0) & (start + chunk == self.target)
        n_prefill = int(chunk.sum())
        phase = Phase.MIXED if (n_prefill and n_decode) else (Phase.PREFILL if n_prefill else Phase.DECODE)
        return Batch(tokens=n_prefill + n_decode * (k + 1), pairs=prefill_pairs + decode_pairs, kv_read=kv_read,
                     samples=int(completes.sum()) + n_decode * (k + 1), prefill_tokens=n_prefill,
                     decode_tokens=n_decode * (k + 1), phase=phase, chunk=chunk, decoding=decoding,
                     prefill_pairs=prefill_pairs, prefill_context=int((start + chunk)[chunk > 0].sum()),
                     draft_tokens=n_decode * k, preempted=len(preempt))

    def complete(self, batch: Batch, end_ns: float) -> tuple[np.ndarray, np.ndarray]:
        """Apply ``batch``, finished at ``end_ns``; return the requests that got their first token
        and those that finished."""
        pre = self._preempt
        if len(pre):
            # Recompute later: the prompt and every token generated so far become its prefill.
            self.admitted[pre] = False
            self.preempted[pre] = True
            self.target[pre] = self.prompt[pre] + self.generated[pre]
            self.prefilled[pre] = 0
            self.shared[pre] = 0
            self.preemptions += len(pre)
        adm = self._admit
        if len(adm):
            self.admitted[adm] = True
            self.preempted[adm] = False
            self.admit_seq[adm] = self._next_seq + np.arange(len(adm))
            self._next_seq += len(adm)
            fresh = adm[~self._ready]            # the others arrived with their KV
            self.shared[fresh] = self._shared_new[~self._ready]
            self.prefilled[fresh] = self._shared_new[~self._ready]
            self.hit_tokens += int(self._shared_new.sum())
            self.query_tokens += int(self.target[fresh].sum())
        self.prefilled += batch.chunk
        completes = (batch.chunk > 0) & (self.prefilled == self.target)
        first = completes & np.isnan(self.first_token_ns)
        self.generated[completes] += 1
        dec = np.flatnonzero(batch.decoding)
        emitted = 1 + accepted_drafts(self.rng, len(dec), self.spec_tokens, self.spec_accept)
        # A sequence keeps no more than it has left to generate.
        emitted = np.minimum(emitted, self.output[dec] - self.generated[dec])
        self.generated[dec] += emitted
        self.decode_steps += len(dec)
        self.decode_emitted += int(emitted.sum())
        np.minimum(self.generated, self.output, out=self.generated)
        self.first_token_ns[first] = end_ns
        if self.prefix_len and not self.prefix_cached:
            # The prefix is cached once a request has computed past it; the requests that did
            # now hold its blocks as the cache's (counted once), as later hits will.
            past = self.admitted & ~self.done & (self.prefilled >= self.prefix_len)
            if past.any():
                self.prefix_cached = True
                self.shared[past] = self.prefix_len
        newly_done = (~self.done & self.admitted & (self.prefilled == self.target)
                      & (self.generated >= self.output))
        self.done |= newly_done
        self.finish_ns[newly_done] = end_ns
        return np.flatnonzero(first), np.flatnonzero(newly_done)


def _fill(budget: int, remaining: np.ndarray) -> np.ndarray:
    """Grant ``budget`` tokens to ``remaining`` in order (each at most what it has left)."""
    before = np.concatenate([[0], np.cumsum(remaining)[:-1]]).astype(np.int64)
    return np.clip(budget - before, 0, remaining).astype(np.int64)


class VirtualEngines:
    """A replica's schedulers under pipeline parallelism: one per micro-batch in flight.

    As vLLM's virtual engines (and TensorRT-LLM's micro-batches) do, a replica split into ``pp``
    stages keeps up to ``pp`` batches in flight: each engine batches its own requests (dealt
    round-robin) under the full token budget and its share of the KV cache, and its next step
    can enter the first stage once its previous one has left the last (its tokens are sampled);
    engines take turns in a fixed rotation (:meth:`pick`).
    With one engine this is the replica's one scheduler. Per-request arrays and counters of the
    engines read as the replica's (``first_token_ns``, ``preemptions``, ...).

    Parameters
    ----------
    arrival_ns, prompt, output : numpy.ndarray
        Per request of the replica, as :class:`ReplicaScheduler`.
    engines : int
        Virtual engines (the pipeline's stages).
    kv_capacity_tokens : int
        The replica's KV-cache tokens, split evenly between the engines (each keeps at least
        room for its longest request).
    **kw
        The other :class:`ReplicaScheduler` arguments, the same for every engine.
    """

    def __init__(self, arrival_ns: np.ndarray, prompt: np.ndarray, output: np.ndarray, *, engines: int = 1,
                 kv_capacity_tokens: int, **kw) -> None:
        n = len(arrival_ns)
        self.n = n
        self.index = [np.arange(v, n, engines) for v in range(engines)]
        need = int((np.asarray(prompt) + np.asarray(output)).max(initial=0)) + int(kw.get("spec_tokens", 0))
        cap = kv_capacity_tokens if engines == 1 else max(kv_capacity_tokens // engines, min(need, kv_capacity_tokens))
        self.engines = [ReplicaScheduler(arrival_ns[i], prompt[i], output[i], kv_capacity_tokens=cap, **kw)
                        for i in self.index]
        self.ready_ns = np.full(engines, -np.inf)   # when each engine's last step left the last stage
        self.current = 0
        self._cursor = 0

    @property
    def finished(self) -> bool:
        return all(e.finished for e in self.engines)

    def candidates(self, free_ns: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per engine: the earliest start (the first stage free and its previous step done),
        whether it has work then, and the next arrival it waits for otherwise."""
        start = np.maximum(self.ready_ns, free_ns)
        runnable = np.array([e.has_runnable(t) for e, t in zip(self.engines, start)])
        # (An engine with work has nothing to wait for: only the others look their arrivals up.)
        nxt = np.array([t if ok else e.next_arrival(t) if not e.finished else np.inf
                        for e, t, ok in zip(self.engines, start, runnable)])
        return start, runnable, nxt

    def pick(self, start: np.ndarray, runnable: np.ndarray, nxt: np.ndarray) -> tuple[int, float]:
        """The engine that enters the pipeline next and when.

        Engines take turns in a fixed rotation while any has work, one with nothing to run
        passing an empty step through (its host work and the pipeline's transfers): then the
        first stage is never free for a step before the engine's previous step has left the last
        stage, since each stage hands a step on only once the next has taken the one before.
        With nothing runnable, the engine whose next request arrives first goes, at its arrival.
        """
        if runnable.any():
            return self._cursor, float(start[self._cursor])
        E = len(self.engines)
        order = (np.arange(E) + self._cursor) % E
        when = np.maximum(start, nxt)[order]
        return int(order[int(np.argmin(when))]), float(when.min())

    def receive(self, idx: np.ndarray, arrival_ns: np.ndarray) -> None:
        """Replica requests ``idx`` arrive at ``arrival_ns`` (engine ``i % engines``, at ``i // engines``)."""
        E = len(self.engines)
        for v in range(E):
            mine = idx % E == v
            if mine.any():
                self.engines[v].receive(idx[mine] // E, arrival_ns[mine])

    def select(self, v: int) -> None:
        """Make engine ``v`` the one :meth:`form` and :meth:`complete` act on."""
        self.current = v
        self._cursor = (v + 1) % len(self.engines)

    def has_runnable(self, now: float) -> bool:
        return self.engines[self.current].has_runnable(now)

    def next_arrival(self, now: float) -> float:
        return self.engines[self.current].next_arrival(now)

    def form(self, now: float) -> Batch:
        """Form the current engine's step starting at ``now`` (ns)."""
        return self.engines[self.current].form(now)

    def complete(self, batch: Batch, end_ns: float) -> tuple[np.ndarray, np.ndarray]:
        """Apply the current engine's ``batch``, out of the last stage at ``end_ns``; return the
        replica's requests that got their first token and those that finished."""
        v = self.current
        first, done = self.engines[v].complete(batch, end_ns)
        self.ready_ns[v] = end_ns
        return self.index[v][first], self.index[v][done]

    def __getattr__(self, name: str):
        # The engines' per-request arrays gathered into the replica's order, counters summed.
        if name.startswith("_") or name in ("engines", "index", "n"):
            raise AttributeError(name)
        values = [getattr(e, name) for e in self.engines]
        if all(isinstance(x, np.ndarray) and len(x) == len(i) for x, i in zip(values, self.index)):
            out = np.empty((self.n,) + values[0].shape[1:], values[0].dtype)
            for x, i in zip(values, self.index):
                out[i] = x
            return out
        if all(isinstance(x, (bool, np.bool_)) for x in values):
            return any(values)
        if all(isinstance(x, (int, float, np.integer, np.floating)) for x in values):
            return sum(values)
        raise AttributeError(f"{name!r} differs between virtual engines")
