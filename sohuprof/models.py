"""Transformer model configurations, read from HuggingFace ``config.json`` files.

Presets (Llama 3, Mixtral, DeepSeek-V3) ship as the models' own config.json in
``sohuprof/presets/models``; a user's config.json is read the same way.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sohuprof.errors import SpecError
from sohuprof.presets import preset_names, read_preset

__all__ = ["MLAConfig", "ModelConfig", "load_model", "model_presets", "DTYPE_BYTES"]

#: Bytes per element of the number formats a model may be served in.
DTYPE_BYTES = {"fp8": 1, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank Q and a compressed, shared KV cache."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class ModelConfig:
    """The shapes of a decoder-only transformer that decide its FLOPs and bytes.

    Attributes
    ----------
    name : str
        Preset name or the config file's stem.
    layers, hidden, heads, kv_heads, head_dim, ffn, vocab : int
        Decoder layers, model width, attention heads, key/value heads (GQA), per-head width,
        dense MLP width, vocabulary size.
    experts, top_k, expert_ffn, shared_experts : int
        Routed experts per MoE layer (0 for a dense model), experts a token visits, each
        expert's MLP width, always-on shared experts.
    first_dense_layers : int
        Leading layers that keep a dense MLP in an MoE model (DeepSeek's first_k_dense_replace).
    expert_groups, groups_per_token : int
        Group-limited routing (DeepSeek's ``n_group`` / ``topk_group``): the routed experts form
        that many contiguous groups and a token's experts lie in at most ``groups_per_token`` of
        them, so with experts laid out over nodes a token reaches few nodes. 0: no limit.
    mla : MLAConfig or None
        Set for multi-head latent attention.
    """

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    experts: int = 0
    top_k: int = 0
    expert_ffn: int = 0
    shared_experts: int = 0
    first_dense_layers: int = 0
    mla: MLAConfig | None = None
    expert_groups: int = 0
    groups_per_token: int = 0

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer >= self.first_dense_layers

    @property
    def moe_layers(self) -> int:
        return self.layers - self.first_dense_layers if self.is_moe else 0

    def attention_params(self) -> int:
        """Weights of one layer's attention block (projections only)."""
        h = self.hidden
        if self.mla is not None:
            m = self.mla
            q = m.q_lora_rank * h + self.heads * (m.qk_nope_head_dim + m.qk_rope_head_dim) * m.q_lora_rank
            kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * self.heads * (m.qk_nope_head_dim + m.v_head_dim)
            return q + kv + self.heads * m.v_head_dim * h
        return h * (self.heads + 2 * self.kv_heads) * self.head_dim + self.heads * self.head_dim * h

    def mlp_params(self, layer: int) -> int:
        """Weights of one layer's MLP or MoE block (all experts, router included)."""
        h = self.hidden
        if not self.is_moe_layer(layer):
            return 3 * h * self.ffn
        return (self.experts + self.shared_experts) * 3 * h * self.expert_ffn + h * self.experts

    def total_params(self) -> int:
        """All weights, embeddings and lm_head included."""
        layers = sum(self.attention_params() + self.mlp_params(i) for i in range(self.layers))
        return layers + 2 * self.vocab * self.hidden

    def active_params(self) -> int:
        """Weights a token's forward pass multiplies with (top-k experts only), lm_head included."""
        h = self.hidden
        total = 0
        for i in range(self.layers):
            total += self.attention_params()
            if self.is_moe_layer(i):
                total += (self.top_k + self.shared_experts) * 3 * h * self.expert_ffn + h * self.experts
            else:
                total += 3 * h * self.ffn
        return total + self.vocab * h

    def kv_elements_per_token(self) -> int:
        """KV-cache elements one token adds to one layer (all heads)."""
        if self.mla is not None:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return 2 * self.kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], *, name: str) -> ModelConfig:
        """Read a HuggingFace ``config.json`` mapping (Llama, Mistral, Mixtral, Qwen, DeepSeek-V2/V3)."""
        def need(key: str) -> int:
            if key not in cfg:
                raise SpecError(f"model config {name}: missing '{key}' (a HuggingFace config.json "
                                "of a decoder-only transformer has it)")
            try:
                return int(cfg[key])
            except (TypeError, ValueError):
                raise SpecError(f"model config {name}: '{key}' must be an integer, got {cfg[key]!r}") from None

        hidden = need("hidden_size")
        heads = need("num_attention_heads")
        layers = need("num_hidden_layers")
        vocab = need("vocab_size")
        ffn = need("intermediate_size")
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        experts = int(cfg.get("num_local_experts") or cfg.get("n_routed_experts") or cfg.get("num_experts") or 0)
        top_k = int(cfg.get("num_experts_per_tok") or 0)
        if experts and not top_k:
            raise SpecError(f"model config {name}: MoE model without 'num_experts_per_tok'")
        expert_ffn = int(cfg.get("moe_intermediate_size") or ffn) if experts else 0
        mla = None
        if cfg.get("kv_lora_rank"):
            try:
                mla = MLAConfig(
                    q_lora_rank=int(cfg.get("q_lora_rank") or hidden),
                    kv_lora_rank=int(cfg["kv_lora_rank"]),
                    qk_nope_head_dim=int(cfg["qk_nope_head_dim"]),
                    qk_rope_head_dim=int(cfg["qk_rope_head_dim"]),
                    v_head_dim=int(cfg["v_head_dim"]),
                )
            except KeyError as exc:
                raise SpecError(f"model config {name}: MLA model missing {exc}") from None
            head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        model = cls(name=name, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                    head_dim=head_dim, ffn=ffn, vocab=vocab, experts=experts, top_k=top_k,
                    expert_ffn=expert_ffn, shared_experts=int(cfg.get("n_shared_experts") or 0),
                    first_dense_layers=int(cfg.get("first_k_dense_replace") or 0) if experts else 0,
                    mla=mla, expert_groups=int(cfg.get("n_group") or 0) if experts else 0,
                    groups_per_token=int(cfg.get("topk_group") or 0) if experts else 0)
        for key in ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab"):
            if getattr(model, key) <= 0:
                raise SpecError(f"model config {name}: '{key}' must be positive")
        if heads % kv_heads:
            raise SpecError(f"model config {name}: {heads} heads is not a multiple of {kv_heads} KV heads")
        if experts and top_k > experts:
            raise SpecError(f"model config {name}: top-k {top_k} exceeds {experts} experts")
        if model.expert_groups and (experts % model.expert_groups or not 0 < model.groups_per_token <= model.expert_groups):
            raise SpecError(f"model config {name}: 'n_group' {model.expert_groups} must divide the {experts} experts "
                            f"and 'topk_group' {model.groups_per_token} be in 1..n_group")
        return model


def model_presets() -> list[str]:
    """Names of the model presets shipped with sohuprof."""
    return preset_names("models", ".json")


def load_model(name_or_path: str | Path) -> ModelConfig:
    """Load a model preset by name (``llama3-70b``...) or a HuggingFace config.json by path
    (a directory holding a config.json works too)."""
    text = str(name_or_path)
    if Path(text).is_dir():
        text = str(Path(text) / "config.json")
    path, raw = read_preset("models", ".json", text, what="model", hint="give a HuggingFace config.json")
    name = path.parent.name if path.name == "config.json" else path.stem
    try:
        cfg = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"model config {text} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise SpecError(f"model config {text}: expected a JSON object")
    return ModelConfig.from_hf_config(cfg, name=name)
