"""Export a PEFT LoRA adapter (llama architecture) as a llama.cpp GGUF LoRA adapter.

Heavy libraries (torch, transformers, peft, gguf, llama_cpp) are imported inside functions
so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]

HF_TO_GGUF_MODULE: dict[str, str] = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

# PEFT keys look like base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
# (optionally with an adapter name such as ".lora_A.default.weight" in live state dicts).
_PEFT_KEY = re.compile(
    r"(?:.*\.)?layers\.(?P<layer>\d+)\.(?P<module>[a-z_]+\.[a-z_]+)"
    r"\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$"
)


@dataclass(frozen=True)
class BaseShape:
    """The base-model hyperparameters the exporter needs."""

    n_head: int
    n_head_kv: int
    n_layers: int

    @classmethod
    def from_gguf(cls, path: Path) -> BaseShape:
        from gguf import GGUFReader  # noqa: PLC0415

        reader = GGUFReader(str(path))
        arch = str(reader.fields["general.architecture"].contents())
        if arch != "llama":
            raise ValueError(f"only llama-architecture bases are supported, got {arch!r}")

        def field(key: str) -> int:
            return int(reader.fields[f"{arch}.{key}"].contents())

        return cls(
            field("attention.head_count"),
            field("attention.head_count_kv"),
            field("block_count"),
        )

    @classmethod
    def from_hf_config(cls, config: Any) -> BaseShape:
        return cls(
            int(config.num_attention_heads),
            int(config.num_key_value_heads),
            int(config.num_hidden_layers),
        )


def permute_qk_rows(weights: FloatArray, n_head: int, n_head_kv: int | None = None) -> FloatArray:
    """Reorder output rows from HF's rotate-half layout to llama.cpp's interleaved RoPE layout.

    Same transform convert_hf_to_gguf applies to q_proj/k_proj weights; transformers undoes
    it when it loads a GGUF. A LoRA delta B@A has the output rows of B, so B gets it too.
    """
    if n_head_kv is not None and n_head_kv != n_head:
        n_head = n_head_kv
    rows = weights.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows cannot be split into {n_head} heads of pairs")
    head_dim_half = rows // n_head // 2
    return (
        weights.reshape(n_head, 2, head_dim_half, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_tensor_name(layer: int, hf_module: str, ab: Literal["A", "B"]) -> str:
    """``blk.<layer>.<gguf module>.weight.lora_a|lora_b`` for a PEFT module path."""
    if hf_module not in HF_TO_GGUF_MODULE:
        raise ValueError(f"LoRA on {hf_module!r} is not supported by the exporter")
    return f"blk.{layer}.{HF_TO_GGUF_MODULE[hf_module]}.weight.lora_{ab.lower()}"


def _load_adapter_dir(adapter_dir: Path) -> tuple[dict[str, FloatArray], float | None]:
    from safetensors.torch import load_file  # noqa: PLC0415

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_rslora"):
        raise ValueError("rsLoRA scaling (alpha/sqrt(r)) cannot be expressed for llama.cpp")
    alpha = config.get("lora_alpha")
    return {k: v.float().numpy() for k, v in tensors.items()}, alpha


def _to_numpy(adapter: Mapping[str, Any]) -> dict[str, FloatArray]:
    out: dict[str, FloatArray] = {}
    for key, value in adapter.items():
        if hasattr(value, "detach"):
            value = value.detach().float().cpu().numpy()
        out[key] = np.asarray(value, dtype=np.float32)
    return out


def _convert(
    tensors: Mapping[str, FloatArray], base: BaseShape, permute_qk: bool
) -> dict[str, FloatArray]:
    """Rename PEFT A/B tensors to GGUF names, permuting q/k lora_b rows."""
    out: dict[str, FloatArray] = {}
    for key, value in tensors.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise ValueError(f"unexpected tensor in LoRA adapter: {key!r}")
        layer, module = int(match["layer"]), match["module"]
        if layer >= base.n_layers:
            raise ValueError(f"{key!r}: layer {layer} beyond base's {base.n_layers} layers")
        ab: Literal["A", "B"] = "A" if match["ab"] == "A" else "B"
        if permute_qk and ab == "B" and module == "self_attn.q_proj":
            value = permute_qk_rows(value, base.n_head, base.n_head)
        elif permute_qk and ab == "B" and module == "self_attn.k_proj":
            value = permute_qk_rows(value, base.n_head, base.n_head_kv)
        out[gguf_tensor_name(layer, module, ab)] = value
    _check_pairs(out)
    return out


def _check_pairs(tensors: Mapping[str, FloatArray]) -> None:
    for name, a in tensors.items():
        if not name.endswith(".lora_a"):
            continue
        b = tensors.get(name[: -len("a")] + "b")
        if b is None or b.shape[1] != a.shape[0]:
            raise ValueError(f"{name}: missing or rank-mismatched lora_b")


def _write_gguf(tensors: Mapping[str, FloatArray], alpha: float, path: Path, dtype: str) -> None:
    import gguf  # noqa: PLC0415

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    np_dtype = np.float16 if dtype == "f16" else np.float32
    for name in sorted(tensors, key=_tensor_sort_key):
        writer.add_tensor(name, np.ascontiguousarray(tensors[name], dtype=np_dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _tensor_sort_key(name: str) -> tuple[int, str]:
    return int(name.split(".")[1]), name


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_lora_gguf(
    adapter: Mapping[str, Any] | Path,
    base: BaseShape,
    alpha: float | None,
    out_path: Path,
    *,
    dtype: Literal["f32", "f16"] = "f32",
    permute_qk: bool = True,
) -> Path:
    """Write ``adapter`` (PEFT state dict or saved adapter dir) as a GGUF LoRA adapter.

    ``alpha`` None takes ``lora_alpha`` from the adapter dir's config; llama.cpp scales
    by alpha / rank, as PEFT does. ``permute_qk=False`` exists only to show the
    permutation is needed; such a file loads but computes the wrong attention.
    The file appears atomically: written to a temp file beside ``out_path``, fsynced,
    then renamed over it.
    """
    if isinstance(adapter, Path):
        tensors, config_alpha = _load_adapter_dir(adapter)
        alpha = config_alpha if alpha is None else alpha
    else:
        tensors = _to_numpy(adapter)
    if alpha is None:
        raise ValueError("alpha is required for a state-dict adapter")
    converted = _convert(tensors, base, permute_qk)
    if not converted:
        raise ValueError("adapter holds no LoRA tensors")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write_gguf(converted, alpha, tmp, dtype)
        _fsync_path(tmp)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(out_path.parent)
    return out_path
