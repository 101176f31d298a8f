# make demo  - set up .venv and run the whole pipeline on the built-in demo data (CPU, a few minutes)
# make test  - set up .venv and run the test suite
# make setup - only create .venv and install requirements.txt + this repo (editable)
# make baseline DATA=~/Clotho          - download + verify Clotho v2.1 and the weights, stages 1-4, train, evaluate,
#                                        then our t2a scores beside the published baseline's (every step resumes)
# make baseline-released DATA=~/Clotho - the same with the baseline's released checkpoint instead of training

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONF ?= conf_demo.yaml
RUN ?= runs/demo
QUERY ?= a bell ringing while falling in pitch
DATA ?= data/Clotho
# ~ is not expanded inside --set (nor by sh after "DATA="): do it here
DATA_DIR = $(patsubst ~%,$(HOME)%,$(DATA))
CLOTHO = --conf conf.yaml --set data.dataset_dir=$(DATA_DIR)
BASELINE_RUN ?= runs/baseline
RELEASED_RUN ?= runs/dcase2023
# the released model is scored on the evaluation split only, clip by clip as the baseline does (README)
RELEASED = $(CLOTHO) --set 'data.splits=[evaluation]'

.PHONY: setup demo test lint clean-demo baseline baseline-released

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-compile -r requirements.txt
	@# pip byte-compiles ~1.9 GB of packages one file at a time; compileall -j 0 uses every core (124 s -> 83 s
	@# on 2 cores). Like pip, it skips files that do not compile (some packages ship such test data).
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(BIN)/python preprocessing/00_make_demo_dataset.py --conf $(CONF) --clips 560 --held-out 80 --duration-range 2 3 --panns-stand-in
	$(BIN)/python preprocessing/01_clotho_dataset.py --conf $(CONF)
	$(BIN)/python preprocessing/02_audio_logmel.py --conf $(CONF)
	$(BIN)/python preprocessing/03_sbert_embeddings.py --conf $(CONF)
	$(BIN)/python preprocessing/04_cnn14_transfer.py --conf $(CONF)
	$(BIN)/python main.py --conf $(CONF)
	$(BIN)/python postprocessing/01_xmodal_scores.py --conf $(CONF) --run $(RUN)
	$(BIN)/python postprocessing/02_xmodal_retrieval.py --conf $(CONF) --run $(RUN)
	$(BIN)/python search.py --run $(RUN) --audio data/demo/evaluation -k 5 "$(QUERY)"
	@echo "listen to the results: python search.py --run $(RUN) --audio data/demo/evaluation --serve"

baseline: setup
	$(BIN)/python preprocessing/00_download_clotho.py $(CLOTHO) --weights
	$(BIN)/python pretrained_models/get_sbert.py
	$(BIN)/python preprocessing/01_clotho_dataset.py $(CLOTHO)
	$(BIN)/python preprocessing/02_audio_logmel.py $(CLOTHO)
	$(BIN)/python preprocessing/03_sbert_embeddings.py $(CLOTHO)
	$(BIN)/python preprocessing/04_cnn14_transfer.py $(CLOTHO)
	$(BIN)/python main.py $(CLOTHO) --set run.dir=$(dir $(BASELINE_RUN)) --set run.name=$(notdir $(BASELINE_RUN))
	$(BIN)/python postprocessing/01_xmodal_scores.py $(CLOTHO) --run $(BASELINE_RUN)
	$(BIN)/python postprocessing/02_xmodal_retrieval.py $(CLOTHO) --run $(BASELINE_RUN)
	$(BIN)/python postprocessing/05_baseline_report.py --run $(BASELINE_RUN)

baseline-released: setup
	$(BIN)/python preprocessing/00_download_clotho.py $(RELEASED) --splits evaluation --released --released-run $(RELEASED_RUN)
	$(BIN)/python pretrained_models/get_sbert.py
	$(BIN)/python preprocessing/01_clotho_dataset.py $(RELEASED)
	$(BIN)/python preprocessing/02_audio_logmel.py $(RELEASED)
	$(BIN)/python preprocessing/03_sbert_embeddings.py $(RELEASED)
	$(BIN)/python postprocessing/01_xmodal_scores.py $(RELEASED) --run $(RELEASED_RUN) --set eval.batch_size=1
	$(BIN)/python postprocessing/02_xmodal_retrieval.py $(RELEASED) --run $(RELEASED_RUN)
	$(BIN)/python postprocessing/05_baseline_report.py --run $(RELEASED_RUN)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean-demo:
	rm -rf data/demo runs/demo
