# Two entry points for a fresh clone: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This repository's folder, whatever the working directory (make -C, make -f).
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
PIP := $(PY) -m pip
# torch and torchvision must be the standard (CUDA-capable) pair: the CPU-only torch wheel
# that some machines pre-seed through pip's find-links cannot load PyPI's torchvision.
# Installing the pair with find-links and pip config switched off picks the right build.
TORCH_PAIR := torch==2.13.0 torchvision==0.28.0

.PHONY: install demo test lint clean chromium ffmpeg-libs review-screenshot

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(PIP) install -q $(TORCH_PAIR)
	$(PIP) install -q -e ".[dev,curation]"
	touch $@

install: ffmpeg-libs $(VENV)/.installed

# The demo: generated videos (moving shapes, a static shot, a cut) -> curation with tiny models
# -> cache of the accepted clips -> LoRA training -> sample.
# Paths are the repository's (configs/curation_tiny.yaml names ../runs/tiny-models, relative to itself).
demo: install
	$(PY) -m curation samples $(ROOT)/runs/demo/videos
	$(PY) -m curation tiny-models $(ROOT)/runs/tiny-models
	$(PY) -m curation run $(ROOT)/runs/demo/videos --out $(ROOT)/runs/demo/curated --config $(ROOT)/configs/curation_tiny.yaml
	$(PY) $(ROOT)/finetune.py demo --out $(ROOT)/runs/demo --source $(ROOT)/runs/demo/curated/manifest.jsonl

# The README's picture of the review page (`python -m curation review`): the generated samples
# curated with the tiny models into runs/review-shot, a few decisions taken, the page in headless
# Chromium saved as docs/review.png. Tests never write it; this target does.
review-screenshot: install chromium
	rm -rf $(ROOT)/runs/review-shot
	$(PY) -m curation samples $(ROOT)/runs/review-shot/videos
	$(PY) -m curation tiny-models $(ROOT)/runs/tiny-models
	$(PY) -m curation run $(ROOT)/runs/review-shot/videos --out $(ROOT)/runs/review-shot/curated --config $(ROOT)/configs/curation_tiny.yaml filters.duplicate_cosine=null
	PYTHONPATH=$(ROOT) $(PY) $(ROOT)/scripts/review_screenshot.py $(ROOT)/runs/review-shot/curated $(ROOT)/docs/review.png

# Video decoding uses torchcodec, which loads FFmpeg's shared libraries from the system (it ships
# none). Debian/Ubuntu name them with the ABI number (libavcodec59 on Debian 12, libavcodec61 on
# Debian 13), so the names are looked up. Installing them needs root; without them every video
# is decoded with PyAV (slower, same results per file; docs/decisions.md).
FFMPEG_LIBS_RE := ^(libav(codec|format|util|filter|device)|libsw(scale|resample))[0-9]+$$
ffmpeg-libs:
	@ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so\.' || ( (apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$$(apt-cache search --names-only '$(FFMPEG_LIBS_RE)' | cut -d' ' -f1 | grep -v -- '-extra') >/dev/null) \
		|| echo "FFmpeg's shared libraries could not be installed: videos will be decoded with PyAV")

# The curation report is tested in headless Chromium (Debian's package). Installing it needs root;
# without it the report tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the report tests will be skipped"

test: install lint chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs
