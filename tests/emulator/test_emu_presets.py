"""Hardware and model presets against published numbers; users' own spec files."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from sohuprof.errors import SpecError
from sohuprof.hardware import HardwareSpec, hardware_presets, load_hardware
from sohuprof.models import load_model, model_presets

T, P, G = 1e12, 1e15, 1e9


@pytest.mark.parametrize("name", ["sohu", "h100", "h200", "b200"])
def test_every_hardware_preset_loads(name: str) -> None:
    assert name in hardware_presets()
    hw = load_hardware(name)
    assert hw.name == name
    assert hw.peak_flops("fp8") >= hw.peak_flops("bf16") > hw.vector_flops > 0
    for eff in (hw.matmul_efficiency, hw.vector_efficiency, hw.memory_efficiency, hw.comm_efficiency):
        assert 0 < eff <= 1


# Datasheet figures (dense): NVIDIA H100 SXM5 / H200 SXM / HGX B200 datasheets; Etched's public
# statements for Sohu. Relative tolerance 2% (the B200 bandwidth is quoted as "~7.7-8 TB/s").
DATASHEET = {
    "h100": {"peak_flops_bf16": 989 * T, "peak_flops_fp8": 1979 * T, "hbm_bandwidth": 3.35 * T, "hbm_bytes": 80 * G},
    "h200": {"peak_flops_bf16": 989 * T, "peak_flops_fp8": 1979 * T, "hbm_bandwidth": 4.8 * T, "hbm_bytes": 141 * G},
    "b200": {"peak_flops_bf16": 2250 * T, "peak_flops_fp8": 4500 * T, "hbm_bandwidth": 7.7 * T},
    "sohu": {"peak_flops_fp8": 9.5 * P, "hbm_bytes": 144 * G, "hbm_bandwidth": 4.8 * T,
             "intra_node_bandwidth": 900 * G, "inter_node_bandwidth": 50 * G},
}


@pytest.mark.parametrize("name,field,value", [(n, f, v) for n, d in DATASHEET.items() for f, v in d.items()])
def test_hardware_preset_matches_datasheet(name: str, field: str, value: float) -> None:
    assert getattr(load_hardware(name), field) == pytest.approx(value, rel=0.02)


def test_hardware_peak_flops_by_dtype() -> None:
    hw = load_hardware("h100")
    assert hw.peak_flops("fp8") == hw.peak_flops_fp8
    assert hw.peak_flops("bf16") == hw.peak_flops("fp16") == hw.peak_flops_bf16
    with pytest.raises(SpecError, match="int4"):
        hw.peak_flops("int4")


# Published parameter counts: Meta (Llama 3 / 3.1 model cards: 8.03B, 70.6B, 405.8B), Mistral
# (Mixtral 8x7B: 46.7B total / 12.9B active; 8x22B: 141B / 39B), DeepSeek-V3 technical report
# (671B total, 37B activated per token, main model without the MTP module).
PARAMS = {
    "llama3-8b": (8.03e9, None),
    "llama3-70b": (70.6e9, None),
    "llama3-405b": (405.8e9, None),
    "mixtral-8x7b": (46.7e9, 12.9e9),
    "mixtral-8x22b": (141e9, 39e9),
    "deepseek-v3": (671e9, 37e9),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_model_parameter_counts_match_published_sizes(name: str) -> None:
    total, active = PARAMS[name]
    m = load_model(name)
    assert m.total_params() == pytest.approx(total, rel=0.01)
    if active is None:
        # Dense: every weight is active except the input embedding table (a lookup, not a matmul).
        assert m.active_params() == m.total_params() - m.vocab * m.hidden
    else:
        assert m.active_params() == pytest.approx(active, rel=0.02)


def test_every_model_preset_is_tested() -> None:
    assert set(model_presets()) == set(PARAMS)


def test_model_presets_are_hf_configs() -> None:
    """The presets are the models' own config.json: read them raw and compare the shapes."""
    for name in model_presets():
        raw = json.loads((resources.files("sohuprof.presets") / "models" / f"{name}.json").read_text())
        m = load_model(name)
        assert (m.hidden, m.layers, m.heads, m.vocab) == (
            raw["hidden_size"], raw["num_hidden_layers"], raw["num_attention_heads"], raw["vocab_size"])
        assert m.kv_heads == raw.get("num_key_value_heads", raw["num_attention_heads"])


def test_moe_and_mla_shapes() -> None:
    mix = load_model("mixtral-8x7b")
    assert (mix.experts, mix.top_k, mix.first_dense_layers, mix.mla) == (8, 2, 0, None)
    ds = load_model("deepseek-v3")
    assert (ds.experts, ds.top_k, ds.shared_experts, ds.first_dense_layers) == (256, 8, 1, 3)
    assert ds.mla is not None and ds.mla.kv_lora_rank == 512
    # MLA caches the 512-wide latent plus the 64-wide rope key per token and layer.
    assert ds.kv_elements_per_token() == 576
    # Llama-3-8B's GQA cache: K and V, 8 heads of 128.
    assert load_model("llama3-8b").kv_elements_per_token() == 2 * 8 * 128


LLAMA_LIKE = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
    "num_attention_heads": 16, "num_hidden_layers": 4, "num_key_value_heads": 4, "vocab_size": 32000,
}


def test_user_config_json_loads(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_LIKE))
    for arg in (folder / "config.json", str(folder / "config.json"), folder):
        m = load_model(arg)
        assert m.name == "my-model"
        assert (m.hidden, m.layers, m.heads, m.kv_heads, m.head_dim, m.ffn) == (2048, 4, 16, 4, 128, 8192)
    # Weights: 4 layers of attention (q, o: 2048^2; k, v: 2048 x 512) and MLP (3 x 2048 x 8192)
    # plus untied embedding and lm_head.
    per_layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192
    assert m.total_params() == 4 * per_layer + 2 * 32000 * 2048


@pytest.mark.parametrize("missing", ["hidden_size", "num_attention_heads", "num_hidden_layers",
                                     "vocab_size", "intermediate_size"])
def test_user_config_json_missing_field_names_it(tmp_path: Path, missing: str) -> None:
    cfg = {k: v for k, v in LLAMA_LIKE.items() if k != missing}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match=f"'{missing}'"):
        load_model(path)


@pytest.mark.parametrize("text,match", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object")])
def test_user_config_json_not_a_config(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SpecError, match=match):
        load_model(path)


def test_unknown_model_preset_lists_choices() -> None:
    with pytest.raises(SpecError, match="llama3-8b"):
        load_model("gpt-17")
    with pytest.raises(SpecError, match="not found"):
        load_model("/nonexistent/config.json")


def _h100_toml() -> str:
    return (resources.files("sohuprof.presets") / "hardware" / "h100.toml").read_text()


def test_user_hardware_toml_loads(tmp_path: Path) -> None:
    text = _h100_toml().replace('name = "h100"', 'name = "my-gpu"').replace("hbm_bandwidth = 3.35e12", "hbm_bandwidth = 5e12")
    path = tmp_path / "my-gpu.toml"
    path.write_text(text)
    hw = load_hardware(path)
    assert hw.name == "my-gpu" and hw.hbm_bandwidth == 5e12
    assert load_hardware(str(path)) == hw
    assert HardwareSpec.from_dict(hw.to_dict()) == hw


@pytest.mark.parametrize("field", ["hbm_bandwidth", "peak_flops_fp8", "intra_node_links"])
def test_user_hardware_toml_missing_field_names_it(tmp_path: Path, field: str) -> None:
    data = tomllib.loads(_h100_toml())
    lines = [line for line in _h100_toml().splitlines() if not line.startswith(f"{field} ")]
    assert field in data
    path = tmp_path / "hw.toml"
    path.write_text("\n".join(lines))
    with pytest.raises(SpecError, match=field):
        load_hardware(path)


def test_user_hardware_toml_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "hw.toml"
    path.write_text(_h100_toml().replace("hbm_bandwidth = 3.35e12", 'hbm_bandwidth = "fast"'))
    with pytest.raises(SpecError, match="hbm_bandwidth"):
        load_hardware(path)
    path.write_text(_h100_toml().replace("matmul_efficiency = 0.70", "matmul_efficiency = 1.5"))
    with pytest.raises(SpecError, match="matmul_efficiency"):
        load_hardware(path)
    path.write_text(_h100_toml() + "\nwarp_drive = 1\n")
    with pytest.raises(SpecError, match="warp_drive"):
        load_hardware(path)
    path.write_text("this is [not toml")
    with pytest.raises(SpecError, match="TOML"):
        load_hardware(path)


def test_unknown_hardware_preset_lists_choices() -> None:
    with pytest.raises(SpecError, match="h100"):
        load_hardware("tpu-v9")
    with pytest.raises(SpecError, match="not found"):
        load_hardware("/nonexistent/hw.toml")


def test_shape_tables_are_checked_and_optional(tmp_path: Path) -> None:
    """Tables need one fraction in (0, 1] per increasing point; a spec without them (an older
    store's manifest, a user's file) loads with flat efficiencies."""
    path = tmp_path / "hw.toml"
    text = _h100_toml()
    path.write_text(text.replace("gemm_efficiency = [0.45,", "gemm_efficiency = [1.45,"))
    with pytest.raises(SpecError, match="gemm_efficiency"):
        load_hardware(path)
    path.write_text(text.replace("attention_decode_efficiency = [0.30, ", "attention_decode_efficiency = ["))
    with pytest.raises(SpecError, match="attention_decode_efficiency"):
        load_hardware(path)
    path.write_text(text.replace("gemm_rows = [64, 128,", "gemm_rows = [128, 64,"))
    with pytest.raises(SpecError, match="gemm_rows"):
        load_hardware(path)
    data = load_hardware("h100").to_dict()
    for key in ("gemm_rows", "gemm_efficiency", "attention_context", "attention_prefill_efficiency",
                "attention_decode_efficiency", "compute_units", "gemm_tile_m", "gemm_tile_n", "nvls"):
        data.pop(key)
    old = HardwareSpec.from_dict(data)
    assert old.gemm_rows == () and old.nvls == 0 and old.compute_units == 1
