"""Training-step time and peak memory of each Hugging Face encoder family at its real size, random weights.

    PYTHONPATH=. python benchmarks/bench_encoders.py [--batch 4] [--seconds 10] [--steps 3] [--only ast,roberta]

Each model is built from its ``transformers`` config at full width (AST base, the CLAP HTSAT audio tower,
the Whisper-base encoder, wav2vec2-base, RoBERTa-large), saved with ``save_pretrained`` with its feature
extractor, then loaded and trained through the code it measures (``HFAudioEncoder`` / ``HFTextEncoder`` and
AdamW, every parameter trainable). One step = the feature extractor on ``--batch`` clips of ``--seconds`` s
(timed apart: in training it runs in the DataLoader workers), then forward, InfoNCE against fixed random
vectors, backward, optimizer step. Each family runs in a fresh subprocess, so its peak RSS is its own.
Not a side-by-side ratio: there is no baseline code path for these encoders; the figures size a machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import (  # benchmarks/machine.py (this folder is on sys.path when run as a script)
    cpu_name,
    save_result,
)

from models.hf_audio import HFAudioEncoder
from models.text_encoders import HFTextEncoder
from utils.training.infonce import info_nce

FAMILIES = {  # name -> (what, sample rate)
    "ast": ("AST base (ASTConfig defaults: 12 layers, 768 wide, 1024 frames)", 16000),
    "clap": ("CLAP audio tower, HTSAT-tiny (ClapAudioConfig defaults, 48 kHz, 10 s)", 48000),
    "whisper": ("Whisper-base encoder (6 layers, 512 wide, 30 s input)", 16000),
    "wav2vec2": ("wav2vec2-base (Wav2Vec2Config defaults: 12 layers, 768 wide)", 16000),
    "roberta": ("RoBERTa-large text (24 layers, 1024 wide), captions of ~15 words", 0),
}
WORDS = "a dog barks while the rain falls on a tin roof and a car passes by in the distance slowly".split()


def save_family(name: str, folder: Path) -> None:
    """Build ``name`` at full size from its config, random weights, and save it with its processor."""
    import transformers as tf

    torch.manual_seed(0)
    if name == "ast":
        tf.ASTModel(tf.ASTConfig()).save_pretrained(folder)
        tf.ASTFeatureExtractor().save_pretrained(folder)
    elif name == "clap":
        tf.ClapAudioModel(tf.ClapAudioConfig()).save_pretrained(folder)
        tf.ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(folder)  # as clap-htsat-unfused
    elif name == "whisper":
        config = tf.WhisperConfig(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                                  decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048)
        tf.WhisperModel(config).save_pretrained(folder)
        tf.WhisperFeatureExtractor().save_pretrained(folder)
    elif name == "wav2vec2":
        tf.Wav2Vec2Model(tf.Wav2Vec2Config()).save_pretrained(folder)
        tf.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        vocab = folder / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]) + "\n")
        tf.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
        config = tf.RobertaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                  intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1)
        tf.RobertaModel(config).save_pretrained(folder)


def measure(name: str, folder: Path, batch: int, seconds: float, steps: int) -> dict:
    """Load ``folder`` through the encoder class and time training steps (run in its own process)."""
    sr = FAMILIES[name][1]
    if name == "roberta":
        enc = HFTextEncoder(str(folder), out_dim=300)
        inputs = [" ".join(np.random.default_rng(i).choice(WORDS, 15)) for i in range(batch)]
    else:
        enc = HFAudioEncoder(str(folder), out_dim=300, sample_rate=sr, pooling="mean")
        rng = np.random.default_rng(0)
        inputs = [(0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32) for _ in range(batch)]
    enc.train()
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=2e-5, weight_decay=0.01)
    target = torch.nn.functional.normalize(torch.randn(batch, 300, generator=torch.Generator().manual_seed(0)), dim=1)
    extract_s, step_s = [], []
    for _ in range(steps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        x = inputs if name == "roberta" else enc.extractor(inputs)
        t1 = time.perf_counter()
        emb = torch.nn.functional.normalize(enc(x), dim=1)
        loss = info_nce(emb, target, torch.arange(batch), 0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        extract_s.append(t1 - t0)
        step_s.append(t2 - t1)
    windows = None if name == "roberta" else len(x.clip_of_window)
    return {"family": name, "what": FAMILIES[name][0], "params_M": round(sum(p.numel() for p in enc.parameters())
                                                                          / 1e6, 1),
            "batch": batch, "seconds": seconds if name != "roberta" else None, "windows": windows,
            "extract_s": round(statistics.median(extract_s[1:]), 3), "step_s": round(statistics.median(step_s[1:]), 2),
            "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "torch_threads": torch.get_num_threads()}


def child(args) -> None:
    folder = Path(args.dir)
    if args.save:
        save_family(args.one, folder)
        return
    print(json.dumps(measure(args.one, folder, args.batch, args.seconds, args.steps)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4, help="clips (or captions) per step")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (s)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (median reported)")
    p.add_argument("--only", default=",".join(FAMILIES), help="comma-separated families: " + ", ".join(FAMILIES))
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--save", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return child(args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            folder = Path(tmp) / name
            base = [sys.executable, __file__, "--one", name, "--dir", str(folder)]
            subprocess.run(base + ["--save"], check=True, env=env)
            out = subprocess.run(base + ["--batch", str(args.batch), "--seconds", str(args.seconds), "--steps",
                                         str(args.steps)], check=True, env=env, stdout=subprocess.PIPE, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    load = os.getloadavg()
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, load {load[0]:.1f}; "
          f"batch {args.batch}, clips of {args.seconds} s, AdamW, all parameters trained\n")
    print("| encoder | params (M) | windows | feature extractor (s) | forward+backward+step (s) | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['params_M']} | {r['windows'] or '-'} | {r['extract_s']} | {r['step_s']} | "
              f"{r['peak_rss_MiB']} |")
    save_result("encoders", {"machine": cpu_name(), "load": load, "rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
