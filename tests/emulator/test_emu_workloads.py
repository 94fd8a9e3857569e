"""Serving workloads: length distributions, prefix caching, speculative decoding (MTP),
preemption when KV runs out, the KV-cache dtype and un-absorbed MLA prefill, each against a hand
count or a statistic of the distribution."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from click.testing import CliRunner
from emu_support import make_config, run_in_memory

from sohuprof.cli import cli
from sohuprof.emulator import emulate
from sohuprof.emulator.config import LengthDist, parse_fault, parse_lengths
from sohuprof.emulator.runtime import Emulation
from sohuprof.emulator.scheduler import ReplicaScheduler, accepted_drafts
from sohuprof.errors import SpecError

# ------------------------------------------------------------------------- length distributions


def test_length_specs_parse_and_say_what_is_wrong(tmp_path) -> None:
    assert parse_lengths("fixed") == LengthDist()
    assert parse_lengths("uniform:min=128,max=4096").bounds(0) == (128, 4096)
    d = parse_lengths("lognormal:sigma=0.5,max=9000")
    assert (d.sigma, d.bounds(1000)) == (0.5, (1, 9000))
    assert parse_lengths("lognormal:sigma=1").bounds(1000) == (1, 8000)    # 8 x the mean by default
    for bad, match in (("gauss", "expected fixed"), ("uniform:min=5", "needs max, min"),
                       ("uniform:min=9,max=3", "exceeds max"), ("uniform:min=0,max=3", "1..2"),
                       ("lognormal:sigma=nan", "sigma must be"), ("lognormal:sigma=1,mu=3", "unknown"),
                       ("uniform:min=a,max=3", "must be a number")):
        with pytest.raises(SpecError, match=match):
            parse_lengths(bad)
    hist = tmp_path / "lengths.csv"
    hist.write_text("length,weight\n100,1\n300,3\n900,0\n")
    d = parse_lengths(f"hist:{hist}")
    assert d.lengths == (100, 300, 900) and d.bounds(0) == (100, 300) and d.mean(0) == 250
    assert d.to_dict()["weights"] == [1.0, 3.0, 0.0] and d.spec() == "hist:lengths.csv"
    for text, match in (("100,1\nabc,2\n", "not 'length,weight'"), ("100,-1\n", "weight"), ("100,0\n", "sum to 0"), ("", "needs 1")):
        hist.write_text(text)
        with pytest.raises(SpecError, match=match):
            parse_lengths(f"hist:{hist}")
    with pytest.raises(SpecError, match="cannot read"):
        parse_lengths(f"hist:{tmp_path / 'missing.csv'}")


def test_length_draws_follow_their_distribution(tmp_path) -> None:
    n = 200_000
    rng = np.random.default_rng(5)
    u = parse_lengths("uniform:min=100,max=200").draw(rng, n, 0)
    assert u.min() == 100 and u.max() == 200 and abs(u.mean() - 150) < 0.5
    # Lognormal with mean --prompt-len: the log's mean is ln(mean) - sigma^2 / 2.
    ln = parse_lengths("lognormal:sigma=0.5").draw(rng, n, 1000)
    assert abs(ln.mean() / 1000 - 1) < 0.01
    assert abs(np.median(ln) / (1000 * math.exp(-0.125)) - 1) < 0.01
    hist = tmp_path / "h.csv"
    hist.write_text("10,1\n20,3\n")
    h = parse_lengths(f"hist:{hist}").draw(rng, n, 0)
    assert set(np.unique(h)) == {10, 20} and abs((h == 20).mean() - 0.75) < 0.005
    assert (LengthDist().draw(rng, 4, 77) == 77).all()


def test_a_run_serves_the_drawn_lengths_reproducibly() -> None:
    kw = dict(nodes=1, chips_per_node=4, tp=4, requests=24, prompt_len=300, output_len=6,
              prompt_dist=parse_lengths("lognormal:sigma=0.8"), output_dist=parse_lengths("uniform:min=2,max=9"))
    a, b = Emulation(make_config(**kw)), Emulation(make_config(**kw))
    assert (a.prompt_tokens == b.prompt_tokens).all() and len(np.unique(a.prompt_tokens)) > 10
    run = run_in_memory(make_config(**kw))
    table = run.em.request_table()
    assert (table["prompt_tokens"] == run.em.prompt_tokens).all()
    assert (table["output_tokens"] == run.em.output_tokens).all()
    assert run.em.output_tokens.min() >= 2 and run.em.output_tokens.max() <= 9
    # Every prompt token is prefilled once: the embedding's bytes count them (one TP rank's share).
    prefill = sum(ev["prefill_tokens"] for ev in run.host if ev["type"] == "step")
    assert prefill == int(run.em.prompt_tokens.sum())
    with pytest.raises(SpecError, match="less than the longest request"):
        Emulation(make_config(**dict(kw, prompt_dist=parse_lengths("uniform:min=1,max=2000000000"))))


# ----------------------------------------------------------------------------------- KV dtype


def test_fp8_kv_holds_half_the_bytes_per_token_of_bf16() -> None:
    """Llama-3-8B at tp 4: a token adds 2 (K, V) x 8 / 4 heads x 128 dims per layer, 1 byte each in fp8."""
    fp8 = Emulation(make_config(nodes=1, chips_per_node=4, tp=4, requests=1, dtype="bf16", kv_dtype="fp8"))
    bf16 = Emulation(make_config(nodes=1, chips_per_node=4, tp=4, requests=1, dtype="bf16"))
    write = lambda em: next(t for t in em.program.templates if t.name == "kv_cache_write").hbm[1]   # per token
    assert write(fp8) == 2 * 2 * 128 * 1 and write(bf16) == 2 * 2 * 128 * 2
    read = lambda em: next(t for t in em.program.templates if t.name == "attention").hbm[3]        # per KV token read
    assert read(bf16) == 2 * read(fp8)
    # The same weights, so the cache holds twice the tokens (to a token's rounding).
    assert abs(fp8.kv_capacity_tokens - 2 * bf16.kv_capacity_tokens) <= 2
    with pytest.raises(SpecError, match="'--kv-dtype'"):
        make_config(kv_dtype="int4").validate()


# ------------------------------------------------------------------------------ prefix caching


def _op_flops(run, name: str) -> float:
    return float(run.rec["flops"][run.name_mask(name)].sum())


def test_a_prefix_hit_skips_exactly_the_cached_tokens_flops() -> None:
    """Requests admitted after the first wave reuse the 256-token system prompt: per hit, every
    token-linear op does 256 tokens less and attention 256 x 257 / 2 pairs less (the pairs the
    prefix's causal attention has), nothing else changes."""
    kw = dict(nodes=1, chips_per_node=4, tp=4, requests=16, output_len=4, max_batch_tokens=2048,
              two_batch_overlap=False)
    c = 256                                                   # prompts of 256 + 256 = 512 tokens
    base, hit = run_in_memory(make_config(**kw, prompt_len=512)), run_in_memory(make_config(**kw, prompt_len=256,
                                                                                             prefix_len=c))
    assert (hit.em.prompt_tokens == 512).all()
    sch = hit.em.schedulers[0]
    hits = sch.hit_tokens // c
    assert hits == 12 and sch.hit_tokens == hits * c         # the first 4 (one 2048-token step) compute it
    assert sch.query_tokens == 16 * 512 and base.em.schedulers[0].hit_tokens == 0
    m, t = hit.cfg.model, hit.cfg.tp
    q, kv = m.heads // t * m.head_dim, m.kv_heads // t * m.head_dim
    per_rank = 4 * m.layers                                   # every TP rank and layer computes its shard
    qkv = 2 * m.hidden * (q + 2 * kv)
    assert _op_flops(base, "qkv_proj") - _op_flops(hit, "qkv_proj") == pytest.approx(per_rank * hits * c * qkv)
    pairs = c * (c + 1) / 2
    assert _op_flops(base, "attention") - _op_flops(hit, "attention") == pytest.approx(
        per_rank * hits * pairs * 4 * (m.heads // t) * m.head_dim, rel=1e-9)
    assert _op_flops(base, "lm_head") == _op_flops(hit, "lm_head")   # every request still samples
    assert base.em.request_table()["output_tokens"].sum() == hit.em.request_table()["output_tokens"].sum()


def test_the_cached_prefix_is_held_once() -> None:
    """Four prompts of 100 tokens opening with the same 80: once cached, each holds 20 of its own."""
    sch = ReplicaScheduler(np.array([0.0, 1.0, 1.0, 1.0]), np.full(4, 100), np.full(4, 50), max_batch_tokens=1000,
                           max_seqs=8, kv_capacity_tokens=1000, prefix_len=80)
    sch.complete(sch.form(0.0), 0.5)             # request 0 computes the prefix
    b = sch.form(1.0)
    assert b.prefill_tokens == 3 * 20            # the others prefill their own 20 only
    sch.complete(b, 1.5)
    # The prefix once, request 0's own 20 and the token it decoded, the others' 20 each.
    assert sch.kv_used() == 80 + (20 + 1) + 3 * 20
    assert sch.hit_tokens == 3 * 80 and sch.query_tokens == 400
    # The prefix comes before each prompt's own tokens (vLLM's benchmark --prefix-len).
    em = Emulation(make_config(nodes=1, chips_per_node=4, tp=4, requests=50, prompt_len=100, prefix_len=64,
                               prompt_dist=parse_lengths("lognormal:sigma=1")))
    assert em.prompt_tokens.min() >= 65 and em.cfg.prompt_bounds == (65, 864)


def test_prefix_hit_rate_is_in_the_run_summary(tmp_path) -> None:
    cfg = make_config(nodes=1, chips_per_node=4, tp=4, requests=12, prompt_len=100, output_len=2,
                      max_batch_tokens=800, prefix_len=300)
    summary = emulate(cfg, tmp_path / "run", show_progress=False)
    # Two requests fill the first step and compute the prefix; the other ten hit 300 of 400 tokens.
    assert summary.prefix_hit_rate == pytest.approx(10 * 300 / (12 * 400))


# ------------------------------------------------------------------------ speculative decoding


@pytest.mark.parametrize("k, accept", [(1, 0.8), (3, 0.7), (4, 0.9), (2, 0.0), (2, 1.0)])
def test_accepted_drafts_expect_the_sum_of_acceptance_powers(k: int, accept: float) -> None:
    draws = accepted_drafts(np.random.default_rng(1), 400_000, k, accept)
    expect = sum(accept ** i for i in range(1, k + 1))
    assert draws.min() >= 0 and draws.max() <= k
    assert abs(draws.mean() - expect) < 0.01
    assert (accepted_drafts(np.random.default_rng(1), 400_000, k, accept) == draws).all()   # seeded


def test_mtp_decode_steps_verify_k_plus_one_and_emit_the_expected_tokens() -> None:
    k, accept = 3, 0.7
    cfg = make_config(nodes=1, chips_per_node=4, tp=4, requests=8, prompt_len=128, output_len=400,
                      spec_tokens=k, spec_accept=accept)
    run = run_in_memory(cfg)
    sch = run.em.schedulers[0]
    expect = cfg.tokens_per_decode
    assert expect == pytest.approx(1 + 0.7 + 0.49 + 0.343)
    # Tokens per (sequence, decode step); each step's cap at the output length shaves a little.
    assert abs(sch.decode_emitted / sch.decode_steps - expect) < 0.05
    assert sch.decode_emitted == 8 * (400 - 1)
    # Each decoding sequence verifies k + 1 tokens; the draft head runs on k per sequence.
    dec = [ev for ev in run.host if ev["type"] == "step" and ev["prefill_tokens"] == 0]
    assert all(ev["decode_tokens"] % (k + 1) == 0 for ev in dec)
    m, t = cfg.model, cfg.tp
    layer = (m.attention_params() + 3 * m.hidden * m.ffn) // t
    drafted = 4 * k * sch.decode_steps                         # four TP ranks
    assert _op_flops(run, "mtp_layer") == pytest.approx(drafted * 2 * layer)
    assert _op_flops(run, "mtp_lm_head") == pytest.approx(drafted * 2 * m.hidden * (m.vocab // t))
    # Attention pairs of one verification: the k + 1 positions each see the context and the drafts before.
    one = ReplicaScheduler(np.zeros(1), np.array([10]), np.array([50]), max_batch_tokens=100, max_seqs=1,
                           kv_capacity_tokens=100, spec_tokens=2, spec_accept=0.5)
    one.complete(one.form(0.0), 1.0)
    b = one.form(1.0)
    assert (b.decode_tokens, b.samples, b.pairs, b.draft_tokens) == (3, 3, 3 * 11 + 3, 2)


def test_without_speculation_there_is_no_draft_head() -> None:
    names = Emulation(make_config(nodes=1, chips_per_node=4, tp=4, requests=1)).names
    assert not any(n.startswith("mtp_") for n in names)


# ---------------------------------------------------------------------------------- preemption


def test_kv_pressure_preempts_and_every_request_still_finishes(tmp_path) -> None:
    """A cache with room for ~3 whole requests and 12 arriving at once: admission no longer
    reserves outputs, so the newest are preempted as outputs grow, and recomputed."""
    base = make_config(nodes=1, chips_per_node=4, tp=4, requests=12, prompt_len=1024, output_len=512)
    em = Emulation(base)
    per_token = (em.cfg.hardware.hbm_bytes * 0.92 - em.weights_per_chip()[0]) / em.kv_capacity_tokens
    hw = dataclasses.replace(base.hardware, hbm_bytes=int(em.weights_per_chip()[0] / 0.92
                                                          + 3.2 * 1536 * per_token / 0.92))
    cfg = dataclasses.replace(base, hardware=hw)
    summary = emulate(cfg, tmp_path / "run", show_progress=False)
    assert summary.preemptions > 0
    assert summary.output_tokens == 12 * 512 and summary.input_tokens == 12 * 1024


def test_cli_takes_the_workload_flags(tmp_path) -> None:
    hist = tmp_path / "out.csv"
    hist.write_text("4,1\n8,1\n")
    res = CliRunner().invoke(cli, ["emulate", "--model", "llama3-8b", "--nodes", "1", "--chips-per-node", "4",
                                   "--tp", "4", "--requests", "6", "--prompt-dist", "uniform:min=200,max=400",
                                   "--output-dist", f"hist:{hist}", "--prefix-len", "100", "--spec-tokens", "2",
                                   "--spec-accept", "0.6", "--kv-dtype", "bf16", "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "prefix cache hit rate" in res.output and "tokens per decode step" in res.output
    res = CliRunner().invoke(cli, ["emulate", "--prompt-dist", "uniform:min=5", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "needs max, min" in res.output and "Traceback" not in res.output


# -------------------------------------------------------------------------- un-absorbed MLA prefill


def test_mla_prefill_attends_un_absorbed_and_decode_stays_absorbed() -> None:
    """DeepSeek-V3 (128 heads, q.k over 192 dims, p.v over 128, latent 512 + 64): a prefill pair
    costs 2 x 128 x (192 + 128) FLOPs, as FlashAttention-style prefill kernels spend, not the
    absorbed 2 x 128 x (576 + 512) (3.4x); each prefill chunk expands its context's latents
    (kv_b_proj, 2 x 512 x 128 x (128 + 128) per context token); decode keeps absorbed MLA."""
    run = run_in_memory(make_config("deepseek-v3", nodes=2, chips_per_node=8, tp=1, ep=16, requests=16,
                                    prompt_len=64, output_len=4))
    hr = 128
    step = [ev for ev in run.host if ev["type"] == "step"]
    attn, up = run.name_mask("attention"), run.name_mask("kv_b_proj")
    layers = run.cfg.model.layers
    for s, phase in ((0, "prefill"), (len(step) // 16 - 1, "decode")):
        here = run.rec["step"] == s
        flops = run.rec["flops"][attn & here].astype(float).sum()
        if phase == "prefill":
            # 16 replicas, one request of 64 tokens each: 64 x 65 / 2 causal pairs, per layer.
            assert flops == pytest.approx(16 * layers * 64 * 65 / 2 * 2 * hr * (192 + 128))
            assert run.rec["flops"][up & here].astype(float).sum() == pytest.approx(
                16 * layers * 64 * 2 * 512 * hr * (128 + 128))
        else:
            ctx = 64 + 3                                         # the third decode: prompt and 3 tokens
            absorbed = ctx * 2 * hr * (576 + 512) + 2 * hr * 512 * (128 + 128)
            assert flops == pytest.approx(16 * layers * absorbed)
            assert run.rec["flops"][up & here].sum() == 0          # nothing to expand in decode


# ---------------------------------------------------------------------------- expert popularity


def test_hot_experts_take_longer_and_their_ranks_send_more() -> None:
    """Mixtral (8 experts, top 2) over EP 8 with Zipf-1.5 popularity: routed pairs follow each
    layer's popularity, a rank's expert GEMM FLOPs follow its pairs, and its combine sends back
    exactly what its experts computed (one bf16 row per pair)."""
    cfg = make_config("mixtral-8x7b", nodes=1, chips_per_node=8, tp=1, ep=8, requests=64, prompt_len=256,
                      output_len=2, expert_skew=1.5)
    run = run_in_memory(cfg)
    p = run.em.expert_p
    w = (1.0 + np.arange(8)) ** -1.5
    assert np.allclose(np.sort(p, axis=1)[:, ::-1], w / w.sum())          # Zipf in every layer
    assert len({int(np.argmax(row)) for row in p}) > 1                     # hottest expert differs by layer
    h, m = cfg.model.hidden, cfg.model
    gate, comb = run.name_mask("expert_gate_up"), run.name_mask("moe_combine")
    key = lambda mask: run.rec["step"][mask].astype(np.int64) * 10**6 + run.rank[mask] * 1000 + run.rec["layer"][mask]
    k_gate, k_comb = key(gate), key(comb)
    # Pairs per (step, rank, layer), 0 where the rank's expert got none (no GEMM record).
    order = np.argsort(k_gate)
    at = np.minimum(np.searchsorted(k_gate[order], k_comb), len(order) - 1)
    found = k_gate[order][at] == k_comb
    assert found.mean() > 0.9
    pairs = np.where(found, run.rec["flops"][gate][order][at] / (4 * h * m.expert_ffn), 0.0)
    assert np.allclose(run.rec["net_bytes"][comb], pairs * h * 2)
    # Over the run each rank (one expert each) computed pairs in proportion to its popularity.
    layer = run.rec["layer"][gate] - m.first_dense_layers
    share = np.bincount(run.rank[gate] * 100 + layer, weights=run.rec["flops"][gate].astype(float), minlength=800)
    share = share.reshape(8, 100)[:, : p.shape[0]]
    assert np.allclose(share / share.sum(0), p.T, atol=0.02)
    with pytest.raises(SpecError, match="'--expert-skew'"):
        make_config("mixtral-8x7b", expert_skew=9.0).validate()


def test_the_hot_experts_rank_sets_the_dispatch_pace_by_what_it_receives() -> None:
    """A rank receives in the dispatch what its experts compute and sends it back in the combine:
    with skewed routing both all-to-alls wait on the hot rank, so (less their latency) the
    dispatch takes the combine's time x its bytes a pair over the combine's: FP8 with a scale a
    128 channels, 4096 + 128 bytes, against bf16's 8192."""
    from test_emu_collectives import _instances

    cfg = make_config("mixtral-8x7b", nodes=1, chips_per_node=8, tp=1, ep=8, requests=64, prompt_len=64,
                      output_len=6, expert_skew=2.0, two_batch_overlap=False)
    cfg = dataclasses.replace(cfg, hardware=dataclasses.replace(cfg.hardware, jitter=0.0))
    run = run_in_memory(cfg)
    fixed = cfg.hardware.launch_overhead_ns + cfg.hardware.intra_node_latency_ns
    d_id, c_id = run.names.index("moe_dispatch"), run.names.index("moe_combine")
    took = {}
    for idx in _instances(run).values():
        name = int(run.rec["name_id"][idx[0]])
        if name in (d_id, c_id):
            key = (int(run.rec["step"][idx[0]]), int(run.rec["layer"][idx[0]]), name)
            took[key] = run.end_ns[idx[0]] - run.start_ns[idx].max() - fixed
    ratio = np.array([took[(s, l, d_id)] / took[(s, l, c_id)] for s, l, n in took if n == d_id])
    assert len(ratio) > 100 and np.allclose(ratio, (4096 + 128) / 8192, rtol=1e-6)


def test_a_seeded_run_with_every_workload_option_is_byte_for_byte_reproducible(tmp_path) -> None:
    hist = tmp_path / "out.csv"
    hist.write_text("3,1\n9,2\n")
    cfg = make_config("mixtral-8x7b", nodes=1, chips_per_node=8, tp=2, ep=4, requests=24, prompt_len=200,
                      output_len=8, rate=4000.0, prompt_dist=parse_lengths("lognormal:sigma=0.6"),
                      output_dist=parse_lengths(f"hist:{hist}"), prefix_len=40, spec_tokens=2, spec_accept=0.6,
                      kv_dtype="bf16", expert_skew=1.0, prefill_replicas=2, seed=11)
    a, b = emulate(cfg, tmp_path / "a", show_progress=False), emulate(cfg, tmp_path / "b", show_progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert a.prefix_hit_rate > 0 and a.tokens_per_decode > 1 and a.kv_transfer_bytes > 0
    assert a == dataclasses.replace(b, path=a.path) and a.output_tokens == int(Emulation(cfg).output_tokens.sum())


# -------------------------------------------------------------------- disaggregated prefill/decode


def test_disaggregated_prefill_sends_each_requests_kv_over_the_nic(tmp_path) -> None:
    """Llama-3-8B, 2 nodes x 4 chips at tp 4: replica 0 (node 0) prefills, replica 1 (node 1)
    decodes. Each request's KV crosses the NIC: per rank 1024 tokens x 32 layers x (2 x 2 heads x
    128) fp8 bytes, at the chip's NIC share, one request after another, plus the NIC latency;
    the decode replica serves a request only once its KV is there."""
    cfg = make_config(nodes=2, chips_per_node=4, tp=4, requests=8, prompt_len=1024, output_len=16, prefill_replicas=1)
    run = run_in_memory(cfg)
    em, hw = run.em, cfg.hardware
    kv = {k: np.concatenate([t[k] for t in em.kv_transfers]) for k in ("request", "src", "dst", "bytes", "start", "end")}
    per_rank = 1024 * 32 * 2 * 2 * 128
    assert sorted(kv["request"].tolist()) == list(range(8)) and (kv["bytes"] == 4 * per_rank).all()
    rate = em.nic_rate[0]                                      # bytes/ns of one chip's NIC share
    assert np.allclose(kv["end"] - kv["start"], per_rank / rate + hw.inter_node_latency_ns)
    order = np.argsort(kv["start"])
    assert (kv["start"][order][1:] >= kv["end"][order][:-1] - 1e-6).all()   # one at a time on the NIC
    table = em.request_table()
    assert (kv["start"] >= table["first_token"][kv["request"]] - 1e-6).all()
    steps = [ev for ev in run.host if ev["type"] == "step"]
    assert all(ev["decode_tokens"] == 0 for ev in steps if ev["replica"] == 0)
    assert all(ev["prefill_tokens"] == 0 for ev in steps if ev["replica"] == 1)
    # The decode replica's first step after a request's KV arrived is its first decode.
    first_decode = min(ev["ts"] for ev in steps if ev["replica"] == 1)
    assert first_decode >= kv["end"].min() - 1e-6
    assert (table["output_tokens"] == 16).all() and (table["finish"] > kv["end"][np.argsort(kv["request"])]).all()
    # A slow NIC on the prefill node slows the transfers by its factor (the bytes' part).
    slow = Emulation(dataclasses.replace(cfg, faults=(parse_fault("slow-link:node=0,factor=0.5"),)))
    for _ in slow.steps():
        pass
    t = slow.kv_transfers[0]
    assert np.allclose(t["end"] - t["start"], 2 * per_rank / rate + hw.inter_node_latency_ns)
    summary = emulate(cfg, tmp_path / "run", show_progress=False)
    assert summary.kv_transfer_bytes == 8 * 4 * per_rank and summary.output_tokens == 8 * 16
    lines = (tmp_path / "run" / "node0" / "host.jsonl").read_text().count('"type":"kv_transfer"')
    assert lines == 8
    with pytest.raises(SpecError, match="must leave a decode replica"):
        make_config(nodes=2, chips_per_node=4, tp=4, prefill_replicas=2).validate()


def test_mtp_speeds_memory_bound_decode_by_nearly_the_tokens_a_step_emits() -> None:
    """At batch 1 a decode step streams the weights whatever it verifies, so MTP (k = 1, 85 %
    acceptance, DeepSeek-V3's figure) cuts the time per output token by close to 1.85x (DeepSeek
    reports 1.8x TPS), less only the draft head's weight reads; at a big batch verification costs
    compute and the gain shrinks."""
    def tpot(requests: int, **kw) -> float:
        em = Emulation(make_config("llama3-70b", hw="h200", nodes=1, chips_per_node=8, tp=8, requests=requests,
                                   prompt_len=512, output_len=96, **kw))
        for _ in em.steps():
            pass
        t = em.request_table()
        return float(np.median((t["finish"] - t["first_token"]) / (t["output_tokens"] - 1)))

    gain_1 = tpot(1) / tpot(1, spec_tokens=1, spec_accept=0.85)
    gain_64 = tpot(64) / tpot(64, spec_tokens=1, spec_accept=0.85)
    assert 1.7 < gain_1 <= 1.85 * 1.03      # a little over the mean: one seeded request's draws
    assert 1.1 < gain_64 < gain_1
