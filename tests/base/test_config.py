import subprocess
import sys
from pathlib import Path

import pytest

from utils.base.config import ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_repo_configs_load_with_baseline_settings():
    conf = load_config(ROOT / "conf.yaml")
    assert conf.train.batch_size == 32 and conf.train.epochs == 80 and conf.train.lr == 1e-3
    assert conf.train.temperature == 0.07 and conf.model.audio_enc.out_dim == 300
    s = conf.train.scheduler
    assert (s.factor, s.patience, s.threshold, s.threshold_mode, s.min_lr) == (0.1, 5, 0.005, "abs", 1e-6)
    assert conf.text.model == "all-mpnet-base-v2" and conf.model.audio_enc.width == 1.0
    assert conf.data.splits == ["development", "validation", "evaluation"]
    demo = load_config(ROOT / "conf_demo.yaml")
    assert demo.model.audio_enc.width < 1.0


def test_conf_modern_is_the_d25_t6_recipe():
    conf = load_config(ROOT / "conf_modern.yaml")
    t = conf.train
    assert (t.batch_size, t.epochs, t.lr, t.optimizer, t.schedule) == (64, 20, 2e-5, "adamw", "cosine")
    assert (t.warmup_epochs, t.lr_min, t.temperature, t.segment_sec) == (1.0, 1e-7, 0.05, 10.0)
    assert conf.model.audio_enc.name == "HFAudioEncoder" and conf.features.kind == "waveform"
    assert conf.model.text_enc.name == "HFTextEncoder" and "roberta-large" in conf.model.text_enc.pretrained
    assert conf.model.text_enc.normalize_captions and not t.early_stop.enabled


def test_defaults_and_work_dir_fallback(tmp_path):
    conf = load_config(write(tmp_path, "data: {dataset_dir: /some/Clotho}\n"))
    assert conf.data.splits == ["development", "validation", "evaluation"]
    assert str(conf.data.out_dir) == "/some/Clotho"
    conf = load_config(write(tmp_path, "{}\n"), ["data.work_dir=/tmp/w"])
    assert str(conf.data.out_dir) == "/tmp/w"


def test_overrides_parse_types(tmp_path):
    conf = load_config(write(tmp_path, "{}\n"), ["train.lr=1e-4", "train.epochs=3", "train.compile=true",
                                                 "data.splits=[development]", "data.dataset_dir=~/x y"])
    assert conf.train.lr == pytest.approx(1e-4) and conf.train.epochs == 3 and conf.train.compile is True
    assert conf.data.splits == ["development"] and conf.data.dataset_dir == "~/x y"
    assert parse_override("a.b=") == ("a.b", "")


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        ("train: {lrr: 0.1}\n", [], "train.lrr"),
        ("{}\n", ["train.epochs=ten"], "train.epochs"),
        ("{}\n", ["model.audio_enc.init=pretrained"], "model.audio_enc.init"),
        ("{}\n", ["nosection.key=1"], "nosection"),
        ("train: {batch_size: 32.5}\n", [], "train.batch_size"),
        ("{}\n", ["train.compile=maybe"], "train.compile"),
        ("{}\n", ["model.text_enc.out_dim=128"], "out_dim"),
        ("{}\n", ["noequals"], "dotted.key=value"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        load_config(write(tmp_path, text), overrides)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [\n"))


def test_script_reports_config_error_without_traceback(tmp_path):
    bad = write(tmp_path, "train: {epoch: 3}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "preprocessing/01_clotho_dataset.py"), "--conf", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown config key 'train.epoch'" in proc.stderr and "Traceback" not in proc.stderr


def test_amp_off_is_a_setting_not_a_yaml_boolean():
    """YAML reads a bare `off` as false: conf.yaml's `eval.amp: off` and `--set eval.amp=off` still mean "off"."""
    conf = load_config(ROOT / "conf.yaml")
    assert conf.eval.amp == "off" and conf.train.amp == "auto"
    conf = load_config(ROOT / "conf.yaml", ["eval.amp=off", "train.amp=off"])
    assert conf.eval.amp == "off" and conf.train.amp == "off"
    assert load_config(ROOT / "conf.yaml", ["eval.amp=bf16"]).eval.amp == "bf16"
