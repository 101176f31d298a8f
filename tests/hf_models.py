"""Tiny random Hugging Face models built from ``transformers`` configs and saved with ``save_pretrained``, so
tests load them by local path through the real loading code. Nothing is fetched."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ("a an the of and while dog barks bell rings rain falls caption clip high low fast slow rising falling "
         "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15").split()


def tiny_bert(folder: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level vocabulary of :data:`WORDS`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(folder)
    return folder


def tiny_ast(folder: Path, seed: int = 0, max_length: int = 128, sampling_rate: int = 16000) -> Path:
    """A 2-layer Audio Spectrogram Transformer (hidden 32, 128 mel frames = 1.28 s at 16 kHz) and its extractor."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(seed)
    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       num_mel_bins=32, max_length=max_length, frequency_stride=10, time_stride=10)
    ASTModel(config).eval().save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=32, max_length=max_length, sampling_rate=sampling_rate,
                        do_normalize=True).save_pretrained(folder)
    return folder


def tiny_clap_audio(folder: Path, seed: int = 0) -> Path:
    """A small CLAP audio tower (HTSAT, ClapAudioModel) and a CLAP feature extractor of 1 s windows at 16 kHz."""
    import torch
    from transformers import ClapAudioConfig, ClapAudioModel, ClapFeatureExtractor

    torch.manual_seed(seed)
    config = ClapAudioConfig(spec_size=64, patch_size=4, patch_stride=[4, 4], num_mel_bins=16, hidden_size=64,
                             depths=[1, 1], num_attention_heads=[2, 2], window_size=4, patch_embeds_hidden_size=16,
                             projection_dim=32, enable_fusion=False)
    ClapAudioModel(config).eval().save_pretrained(folder)
    ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=250, max_length_s=1, fft_window_size=400,
                         truncation="rand_trunc", padding="repeatpad").save_pretrained(folder)
    return folder


def tone(seconds: float, freq: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A sine with a little noise, mono float32."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.normal(size=t.shape)).astype(np.float32)


def add_waveforms(work: Path, splits: tuple[str, ...] = ("development", "validation"), sr: int = 16000,
                  seconds: tuple[float, float] = (0.8, 2.6), seed: int = 0) -> None:
    """Next to a :func:`conftest.make_work_dir` folder's log-mels, a waveform feature set of the same clips:
    ``<split>_audio_waveforms_<sr>hz.hdf5``, one ``(samples, 1)`` tone per fid (pitch set by the clip)."""
    import h5py

    from utils.base.tables import read_audio_table

    rng = np.random.default_rng(seed)
    for split in splits:
        rows = read_audio_table(work / f"{split}_audio.csv")
        with h5py.File(work / f"{split}_audio_waveforms_{sr}hz.hdf5", "w") as h5:
            for i, row in enumerate(rows):
                y = tone(float(rng.uniform(*seconds)), 200.0 + 150.0 * (i % 8), sr, seed=i)
                h5[row["fid"]] = y.reshape(-1, 1)
