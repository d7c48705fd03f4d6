#!/usr/bin/env python3
"""The tiny, randomly initialised Qwen2-VL that the real-server tests serve with llama.cpp.

Not part of the paper: test infrastructure. ReFineG talks to a multimodal LLM over the OpenAI
protocol; no trained vision-language model can be installed on our machines, so the integration
tests (tests/real/test_realserver.py) run a real `llama-server` on this model instead. Its text is
noise; what is real is the architecture (transformers' Qwen2VLForConditionalGeneration), the
tokenizer (the Qwen2.5 BPE tokenizer read out of a Qwen2.5 GGUF) and the image preprocessing
(Qwen2-VL: patch 14, merge 2, CLIP mean/std), hence the real request path of the server.

Input: a GGUF holding a Qwen2/2.5 tokenizer. Output: an HF checkpoint directory (config, weights
from a fixed seed, tokenizer, image processor) that llama.cpp's convert_hf_to_gguf.py turns into
the text GGUF and, with --mmproj, the vision-encoder GGUF. Same seed, same bytes.

  python tests/realserver/make_tiny_qwen2vl.py --tokenizer-gguf TOK.gguf --out DIR [--seed 0]

(tests/realserver/build.sh runs it; `make real-server` runs that.) Left out on purpose: any
training; video; sizes beyond what the converter and the server need to load the model.
Adapted from shared/tools/tiny_vlm/make_tiny_qwen2vl.py.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# Qwen2-VL style chat template, written for this tool. It accepts string content and
# OpenAI-style typed content. Text-like parts (llama-server turns every image part into a
# {"type": "media_marker", "text": "<__media_...__>"} part) are emitted verbatim; real
# image/video parts (HF processor usage) become the usual vision placeholder.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['text'] is defined -%}"
    "{{- part['text'] -}}"
    "{%- elif part['type'] == 'image' or part['type'] == 'image_url' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-gguf", required=True, help="GGUF file that carries a Qwen2/2.5 tokenizer")
    ap.add_argument("--out", required=True, help="output directory (HF checkpoint)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-hidden", type=int, default=128)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--vision-embed", type=int, default=64)
    # >= 3: the converter maps "visual.merger.mlp.{bid}" through the per-block table, which
    # only has entries for bid < depth, so depth 2 fails on "visual.merger.mlp.2.bias".
    ap.add_argument("--vision-layers", type=int, default=3)
    args = ap.parse_args()

    import torch
    from transformers import (
        AutoTokenizer,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    gguf_path = Path(args.tokenizer_gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    needed = [
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    ids = {t: tok.convert_tokens_to_ids(t) for t in needed}
    for t, i in ids.items():
        if i is None or i == tok.unk_token_id:
            raise SystemExit(f"tokenizer lacks {t!r}; need a Qwen2/2.5 tokenizer")
    tok.chat_template = CHAT_TEMPLATE
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.save_pretrained(str(out))

    vocab_size = 151936  # Qwen2.5 embedding rows (>= len(tokenizer))
    assert max(tok.get_vocab().values()) < vocab_size

    th = args.text_hidden
    n_head = 2
    head_dim = th // n_head  # 64 for th=128
    # M-RoPE sections must sum to head_dim/2 (Qwen2-VL: [16,24,24] for head_dim 128)
    half = head_dim // 2
    t_sec = half // 4
    hw = (half - t_sec) // 2
    mrope = [t_sec, hw, half - t_sec - hw]

    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": th,
        "intermediate_size": th * 2,
        "num_hidden_layers": args.text_layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": 1,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": True,
    }
    vision_config = {
        "depth": args.vision_layers,
        "embed_dim": args.vision_embed,
        "hidden_size": th,  # output of the patch merger == text hidden size
        "hidden_act": "quick_gelu",
        "mlp_ratio": 2,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )

    torch.manual_seed(args.seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(out), safe_serialization=True)

    # Qwen2-VL image processor (same numbers as the official checkpoints)
    ip = Qwen2VLImageProcessor(
        min_pixels=56 * 56,
        max_pixels=28 * 28 * 1280,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    ip.save_pretrained(str(out))
    # the converter reads image_mean/std from preprocessor_config.json; make sure it exists
    pp = out / "preprocessor_config.json"
    if not pp.is_file():
        pp.write_text(json.dumps(ip.to_dict(), indent=2))

    # the tokenizer chat template also goes to a standalone file (handy for --chat-template-file)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    print(
        json.dumps(
            {
                "out": str(out),
                "params": n_params,
                "mrope_section": mrope,
                "special_ids": ids,
                "files": sorted(os.listdir(out)),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
