# Two commands for new users:  `make train export`  and  `make test`.
# Every target installs what it needs into .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PRESET ?= demo

.PHONY: install train export test lint bench bench-bundle ablation step-time serve index data proto clean help

help:
	@echo "make train export   train the demo teacher + CDD student, export both bundles"
	@echo "make test           install and run the whole test suite"
	@echo "make lint | bench | bench-bundle | ablation | step-time | index | serve | data | proto | clean"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[dev,milvus]"
	# animal-mnist ships its images in the wheel; it declares tensorflow, which we do not need.
	$(PIP) install -q --no-deps animal-mnist==0.4
	touch $(STAMP)

install: $(STAMP)

data/synthetic-reid/.complete: | $(STAMP)
	$(PY) -m training.data.synthetic --out data/synthetic-reid

data/animal-mnist/.complete: | $(STAMP)
	$(PY) -m training.data.animal_mnist --out data/animal-mnist

data: data/synthetic-reid/.complete

train: data
	$(PY) -m training.pipeline --preset $(PRESET)

# The teacher first: the student's bundle declares compatibility with it (asymmetric retrieval: student
# queries on a teacher-embedded gallery) once the compatibility gate passes. COMPATIBLE= exports without it.
COMPATIBLE ?= --compatible-with bundles/$(PRESET)-teacher
export: $(STAMP)
	$(PY) -m export --run runs/$(PRESET)/teacher --out bundles/$(PRESET)-teacher
	$(PY) -m export --run runs/$(PRESET)/student --out bundles/$(PRESET) $(COMPATIBLE)

index: $(STAMP)
	$(VENV)/bin/cdd-index build --bundle bundles/$(PRESET) --images data/synthetic-reid/bounding_box_test \
		--out indexes/$(PRESET)

serve: $(STAMP)
	$(VENV)/bin/cdd-serve --bundle bundles/$(PRESET) --index indexes/$(PRESET) --host 127.0.0.1 --port 50051

bench: $(STAMP)
	$(PY) -m serving.benchmarks all --out docs

# A realistic-cost bundle for the serving benchmark: ResNet-50 at 256x128 through the real chain
# (a small 256x128 synthetic set -> train 2 steps -> export with parity gates). Accuracy is irrelevant;
# the cost per image is real.
data/bench-reid/.complete: | $(STAMP)
	$(PY) -m training.data.synthetic --out data/bench-reid --train-ids 8 --test-ids 8 --images-per-id 4 \
		--cameras 4 --distractors 0 --junk 0 --height 256 --width 128

bench-bundle: data/bench-reid/.complete
	$(PY) -m training --preset demo-teacher --set run.out_dir=runs/bench-r50 --set data.root=data/bench-reid \
		--set model.depth=50 --set model.width=1.0 --set data.height=256 --set data.width=128 --set run.epochs=1 \
		--set run.max_steps_per_epoch=2 --set run.eval_every=0 --set data.p=4 --set data.k=2 --set run.progress=false
	$(PY) -m export --run runs/bench-r50 --out bundles/bench-r50 --tensorrt off --set gates.images=8 --set batch.max=16

# (a) teacher, (b) CDD, (c) static from scratch, (d) CDD without resetting, (e) prune-then-distill;
# 3 seeds, both datasets (resumable; docs/ablation-*.{md,json} rewritten after every finished run).
ablation: data data/animal-mnist/.complete
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets synthetic --seeds 0 1 2 --out docs
	OMP_NUM_THREADS=1 $(PY) -m training.ablation --datasets animal-mnist --seeds 0 1 2 --out docs

step-time: $(STAMP)
	$(PY) -m training.bench_step --preset demo-student --steps 20 --out docs/step_time.json

proto: $(STAMP)
	$(PY) -m serving.proto_build

lint: $(STAMP)
	$(VENV)/bin/ruff check training export serving tests

test: $(STAMP)
	$(VENV)/bin/ruff check training export serving tests
	$(VENV)/bin/pytest

clean:
	rm -rf runs bundles indexes data build
